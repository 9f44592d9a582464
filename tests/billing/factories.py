from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from accounts.models import Account
from billing.models import Provider, Subscription
from keys.models import ApiKey, ProviderKey
from keys.vault import encrypt


def provider_key(account: Account, n: int) -> ProviderKey:
    return ProviderKey.objects.create(
        account=account,
        name=f"pk{n}",
        ciphertext=encrypt(f"sk-test-{n:04d}"),
        hint=f"sk-…{n:04d}",
        created_at=timezone.now() - timedelta(days=100 - n),
    )


def api_key(account: Account, pk: ProviderKey | None, n: int) -> ApiKey:
    return ApiKey.objects.create(
        account=account,
        provider_key=pk,
        name=f"key{n}",
        prefix=f"bllm_t{account.pk}x{n}",
        digest="0" * 64,
        created_at=timezone.now() - timedelta(days=100 - n),
    )


def subscription(
    account: Account,
    *,
    plan: str = "pro",
    status: str = Subscription.Status.ACTIVE,
    provider: str = Provider.RAZORPAY,
    sub_id: str = "sub_Test0000000001",
) -> Subscription:
    return Subscription.objects.create(
        account=account,
        provider=provider,
        provider_subscription_id=sub_id,
        plan=plan,
        status=status,
        started_at=timezone.now(),
        current_period_end=timezone.now() + timedelta(days=30),
    )
