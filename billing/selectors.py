"""Reads for the billing page."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Max

from accounts.models import Account
from budgets.models import Cap
from keys.models import ApiKey, ProviderKey

from .entitlements import PLANS, Entitlements, entitlements_for
from .models import Payment, Subscription
from .services import Price, current_subscription, prices, provider_order


@dataclass(frozen=True)
class Usage:
    label: str
    used: int
    limit: int


@dataclass(frozen=True)
class BillingOverview:
    entitlements: Entitlements
    subscription: Subscription | None
    usage: list[Usage]
    largest_monthly_cap_micros: int | None
    disabled_keys: int
    payments: list[Payment]
    # Providers in the order to offer them, each with its paid plans' prices.
    offers: list[tuple[str, list[Price]]]
    plans: dict[str, Entitlements]


def billing_overview(*, account: Account, accept_language: str) -> BillingOverview:
    ent = entitlements_for(account)
    provider_keys = ProviderKey.objects.filter(account=account)
    api_keys = ApiKey.objects.filter(account=account, revoked_at__isnull=True)
    usage = [
        Usage(
            "Provider keys",
            provider_keys.filter(disabled_at__isnull=True).count(),
            ent.max_provider_keys,
        ),
        Usage(
            "BudgetLLM keys", api_keys.filter(disabled_at__isnull=True).count(), ent.max_api_keys
        ),
    ]
    disabled = (
        provider_keys.filter(disabled_at__isnull=False).count()
        + api_keys.filter(disabled_at__isnull=False).count()
    )
    largest = Cap.objects.filter(account=account, period=Cap.Period.MONTH).aggregate(
        m=Max("limit_micros")
    )["m"]
    all_prices = prices()
    order = provider_order(account=account, accept_language=accept_language)
    return BillingOverview(
        entitlements=ent,
        subscription=current_subscription(account),
        usage=usage,
        largest_monthly_cap_micros=largest,
        disabled_keys=disabled,
        payments=list(Payment.objects.filter(account=account).order_by("-paid_at")[:50]),
        offers=[(p, all_prices[p]) for p in order],
        plans=PLANS,
    )


def ending_subscription(*, account: Account) -> Subscription | None:
    """The newest subscription, for "your plan ends on …" / "ended" lines."""
    return Subscription.objects.filter(account=account).order_by("-created_at").first()
