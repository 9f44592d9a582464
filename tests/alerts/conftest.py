"""Fixtures for alert tests: the local Slack/Discord stand-in and a Pro-plan account."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync

from accounts.models import Account
from billing.models import Subscription
from budgets import services
from budgets.ledger import reset_ledger
from keys.models import ApiKey
from keys.services import ResolvedKey
from tests.conftest import Person
from tests.fakes import webhook_server
from tests.fakes.webhook_server import FakeWebhooks


@pytest.fixture(scope="session")
def webhooks_server() -> Iterator[FakeWebhooks]:
    fake = webhook_server.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def webhooks(webhooks_server: FakeWebhooks, settings) -> FakeWebhooks:  # type: ignore[no-untyped-def]
    """The fake webhook server, allowed as a test origin (tests only), with a clean log."""
    settings.TESTING = True
    settings.ALERT_WEBHOOK_TEST_ORIGINS = [webhooks_server.origin]
    with webhooks_server.lock:
        webhooks_server.received.clear()
        webhooks_server.failures.clear()
    return webhooks_server


@pytest.fixture
def pro_plan(owner: Person) -> None:
    """The owner's account is on Pro (Slack and Discord alerts): an active subscription."""
    Subscription.objects.create(
        account=owner.account,
        provider="razorpay",
        provider_subscription_id="sub_alerts_test",
        plan="pro",
        status=Subscription.Status.ACTIVE,
    )


@pytest.fixture(autouse=True)
def _fresh_ledger(settings) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """A private Redis key prefix per test, so counters never leak between tests."""
    settings.LEDGER_REDIS_PREFIX = f"test:{uuid.uuid4().hex[:12]}:"
    reset_ledger()
    yield
    reset_ledger()


def charge(account: Account, micros: int, *, api_key: ApiKey, model: str = "gpt-4o-mini") -> None:
    """Spend exactly `micros` through the ledger, as the proxy does: admit, then settle."""
    key = ResolvedKey(
        api_key_id=api_key.pk,
        api_key_public_id=api_key.public_id,
        api_key_name=api_key.name,
        account_id=account.pk,
        account_timezone=account.timezone,
        account_paused=False,
        key_paused=False,
        provider="openai",
        provider_key_id=None,
        provider_key_ciphertext=None,
        cache_ttl_seconds=0,
    )
    request_id = uuid.uuid4()
    admission = services.admit_blocking(
        services.AdmitRequest(
            key=key,
            endpoint="chat.completions",
            model=model,
            input_tokens_bound=1,
            requested_output_tokens=16,
            request_id=request_id,
        )
    )
    usage = services.UsageData(
        request_id=request_id,
        endpoint="chat.completions",
        model=model,
        run_id="",
        input_tokens=1,
        cached_tokens=0,
        output_tokens=16,
        cost_micros=micros,  # settle charges the actual cost, even above the reservation
        saved_micros=0,
        cache_status="MISS",
        http_status=200,
        latency_ms=5,
    )
    async_to_sync(services.budget_settle)(admission=admission, usage=usage)
    services.usage_drain()  # the Redis ledger buffers usage rows; store them now
