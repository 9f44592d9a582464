"""Fixtures for alert tests: the local Slack/Discord stand-in and a Pro-plan account."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from billing.models import Subscription
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
