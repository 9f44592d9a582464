"""The provider-key vault and BudgetLLM (`bllm_`) keys."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Account


class ProviderKey(models.Model):
    class Provider(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="provider_keys")
    provider = models.CharField(max_length=16, choices=Provider.choices, default=Provider.OPENAI)
    name = models.CharField(max_length=100, blank=True)
    # MultiFernet token (authenticated encryption); never the plain key.
    ciphertext = models.TextField()
    # What the user sees: "sk-…abcd". Safe to render.
    hint = models.CharField(max_length=32)
    created_at = models.DateTimeField(default=timezone.now)
    # Set when a plan downgrade leaves more keys than the plan allows.
    disabled_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.get_provider_display()} {self.hint}"


class ApiKey(models.Model):
    """A `bllm_` key: shown once, stored as lookup prefix + HMAC-SHA256 digest."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="api_keys")
    provider_key = models.ForeignKey(
        ProviderKey, on_delete=models.SET_NULL, null=True, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    # The proxy resolves a presented key by this prefix (unique index) in one query,
    # then compares the digest in constant time.
    prefix = models.CharField(max_length=24, unique=True)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Kill-switch for this key (set by the user or the spend-spike breaker).
    paused_at = models.DateTimeField(null=True, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    cache_ttl_seconds = models.PositiveIntegerField(default=24 * 3600)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and self.disabled_at is None


class KeyAuditEvent(models.Model):
    class Action(models.TextChoices):
        PROVIDER_KEY_ADDED = "provider_key.added", "Provider key added"
        PROVIDER_KEY_DELETED = "provider_key.deleted", "Provider key deleted"
        API_KEY_CREATED = "api_key.created", "BudgetLLM key created"
        API_KEY_REVOKED = "api_key.revoked", "BudgetLLM key revoked"
        API_KEY_PAUSED = "api_key.paused", "BudgetLLM key paused"
        API_KEY_RESUMED = "api_key.resumed", "BudgetLLM key resumed"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="key_events")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    action = models.CharField(max_length=32, choices=Action.choices)
    # A safe description of the key ("prod (bllm_ab12…)", "OpenAI sk-…abcd"), never a secret.
    subject = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            # The audit list on the keys page: newest events of one account.
            models.Index(fields=["account", "-created_at"], name="keyaudit_account_created"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.subject}"
