"""Fixtures for the ledger: both implementations, a key, and helpers to read totals."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from accounts.models import Account
from budgets.ledger import Ledger, RedisLedger, SqlLedger, reset_ledger
from budgets.services import AdmitRequest, UsageData
from keys.models import ApiKey

# The Redis ledger is tested on every run where a Redis answers, embedded-default runs
# included (on a db of its own). Only a machine without Redis skips it, and CI never does.
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


REDIS_SKIP = not os.environ.get("CI") and not _redis_answers(REDIS_URL)


@dataclass(frozen=True)
class Key:
    """The shape of keys.services.ResolvedKey that budgets reads (the proxy's input)."""

    api_key_id: int
    api_key_public_id: uuid.UUID
    api_key_name: str
    account_id: int
    account_timezone: str
    account_paused: bool = False
    key_paused: bool = False
    provider: str = "openai"
    provider_key_id: int | None = None
    provider_key_ciphertext: str | None = None
    cache_ttl_seconds: int = 86400


def make_api_key(account: Account, name: str = "ci-bot") -> ApiKey:
    return ApiKey.objects.create(
        account=account, name=name, prefix=uuid.uuid4().hex[:12], digest="0" * 64
    )


def key_for(api_key: ApiKey, **overrides: object) -> Key:
    values: dict[str, object] = {
        "api_key_id": api_key.id,
        "api_key_public_id": api_key.public_id,
        "api_key_name": api_key.name,
        "account_id": api_key.account_id,
        "account_timezone": api_key.account.timezone,
    }
    values.update(overrides)
    return Key(**values)  # type: ignore[arg-type]


def redis_ledger(**kwargs: object) -> RedisLedger:
    kwargs.setdefault("prefix", f"test:{uuid.uuid4().hex[:10]}:")
    return RedisLedger(url=REDIS_URL, **kwargs)  # type: ignore[arg-type]


def cleanup_redis(ledger: RedisLedger) -> None:
    client = ledger.client()
    keys = list(client.scan_iter(match=ledger.prefix + "*", count=500))
    if keys:
        client.delete(*keys)


LEDGERS = [
    "sql",
    pytest.param(
        "redis",
        marks=pytest.mark.skipif(REDIS_SKIP, reason=f"no Redis answers at {REDIS_URL}"),
    ),
]


def build(kind: str, **kwargs: object) -> Ledger:
    if kind == "redis":
        return redis_ledger(**kwargs)
    return SqlLedger(**kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=LEDGERS)
def ledger_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ledger(ledger_kind: str) -> Iterator[Ledger]:
    built = build(ledger_kind)
    yield built
    if isinstance(built, RedisLedger):
        cleanup_redis(built)


@pytest.fixture
def configured_ledger(ledger_kind: str, settings) -> Iterator[Ledger]:  # type: ignore[no-untyped-def]
    """The services' ledger (get_ledger()) set to `ledger_kind`, isolated per test."""
    from budgets import services
    from budgets.ledger import get_ledger

    settings.LEDGER_BACKEND = ledger_kind
    settings.LEDGER_REDIS_URL = REDIS_URL
    settings.LEDGER_REDIS_PREFIX = f"test:{uuid.uuid4().hex[:10]}:"
    reset_ledger()
    built = get_ledger()

    services._config_cache.clear()
    yield built
    reset_ledger()
    services._config_cache.clear()
    if isinstance(built, RedisLedger):
        cleanup_redis(built)


MODEL = "gpt-4o-mini"  # 0.15 µ$ per input token, 0.6 µ$ per output token


def admit_request(key: Key, **kw: object) -> AdmitRequest:
    """An admission request for `key` with sensible defaults; keywords override."""
    values: dict[str, object] = {
        "key": key,
        "endpoint": "chat.completions",
        "model": MODEL,
        "input_tokens_bound": 1_000,
        "requested_output_tokens": 100,
    }
    values.update(kw)
    return AdmitRequest(**values)  # type: ignore[arg-type]


def usage(cost: int, **kw: object) -> UsageData:
    """What the proxy reports after a call that cost `cost` micros; keywords override."""
    values: dict[str, object] = {
        "request_id": uuid.uuid4(),
        "endpoint": "chat.completions",
        "model": MODEL,
        "run_id": "",
        "input_tokens": 800,
        "cached_tokens": 0,
        "output_tokens": 40,
        "cost_micros": cost,
        "saved_micros": 0,
        "cache_status": "MISS",
        "http_status": 200,
        "latency_ms": 12,
    }
    values.update(kw)
    return UsageData(**values)  # type: ignore[arg-type]
