"""Reads for the keys page, always scoped to one account."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet

from accounts.models import Account
from billing.entitlements import entitlements_for

from .models import ApiKey, KeyAuditEvent, ProviderKey

AUDIT_EVENTS_SHOWN = 50


@dataclass(frozen=True)
class KeyLimits:
    plan: str
    provider_keys: int
    max_provider_keys: int
    api_keys: int  # active (not revoked)
    max_api_keys: int

    @property
    def can_add_provider_key(self) -> bool:
        return self.provider_keys < self.max_provider_keys

    @property
    def can_create_api_key(self) -> bool:
        return self.api_keys < self.max_api_keys


def provider_keys_for(*, account: Account) -> QuerySet[ProviderKey]:
    return (
        ProviderKey.objects.filter(account=account)
        .annotate(active_api_keys=Count("api_keys", filter=Q(api_keys__revoked_at__isnull=True)))
        .order_by("created_at")
    )


def api_keys_for(*, account: Account) -> QuerySet[ApiKey]:
    # Active keys first, then revoked ones, newest first within each.
    return (
        ApiKey.objects.filter(account=account)
        .select_related("provider_key")
        .order_by("revoked_at", "-created_at")
    )


def audit_events_for(*, account: Account, limit: int = AUDIT_EVENTS_SHOWN) -> list[KeyAuditEvent]:
    # Served by the keyaudit_account_created index.
    return list(
        KeyAuditEvent.objects.filter(account=account)
        .select_related("actor")
        .order_by("-created_at", "-id")[:limit]
    )


def key_limits_for(*, account: Account) -> KeyLimits:
    ent = entitlements_for(account)
    return KeyLimits(
        plan=ent.plan.capitalize(),
        provider_keys=ProviderKey.objects.filter(account=account).count(),
        max_provider_keys=ent.max_provider_keys,
        api_keys=ApiKey.objects.filter(account=account, revoked_at__isnull=True).count(),
        max_api_keys=ent.max_api_keys,
    )
