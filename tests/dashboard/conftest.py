from __future__ import annotations

import datetime as dt
import uuid

import pytest

from accounts.models import Account
from budgets.models import UsageRecord
from keys.models import ApiKey, ProviderKey


def make_key(account: Account, name: str = "prod") -> ApiKey:
    pk = ProviderKey.objects.create(account=account, ciphertext="x", hint="sk-…abcd")
    return ApiKey.objects.create(
        account=account, provider_key=pk, name=name, prefix=uuid.uuid4().hex[:12], digest="0" * 64
    )


def record(
    account: Account,
    key: ApiKey | None,
    at: dt.datetime,
    *,
    cost: int = 1000,
    saved: int = 0,
    model: str = "gpt-4o-mini",
    hit: bool = False,
    run_id: str = "",
) -> UsageRecord:
    return UsageRecord.objects.create(
        account=account,
        api_key=key,
        endpoint="chat.completions",
        model=model,
        run_id=run_id,
        input_tokens=10,
        output_tokens=20,
        cost_micros=0 if hit else cost,
        saved_micros=saved if hit else 0,
        cache_status="HIT" if hit else "MISS",
        http_status=200,
        latency_ms=12,
        created_at=at,
    )


@pytest.fixture
def key(owner):  # type: ignore[no-untyped-def]
    return make_key(owner.account)
