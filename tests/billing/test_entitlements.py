from __future__ import annotations

from datetime import timedelta

import time_machine
from django.utils import timezone

from billing.entitlements import entitlements_for, plan_for
from billing.models import Subscription

from .factories import subscription


def test_account_without_subscription_is_free(owner) -> None:
    ent = entitlements_for(owner.account)
    assert ent.plan == "free"
    assert (ent.max_provider_keys, ent.max_api_keys, ent.history_days) == (1, 1, 7)
    assert ent.max_monthly_cap_micros == 100_000_000


def test_active_subscription_grants_its_plan_at_once(owner) -> None:
    sub = subscription(owner.account, plan="pro")
    assert entitlements_for(owner.account).max_api_keys == 5
    sub.status = Subscription.Status.HALTED
    sub.save()
    assert plan_for(owner.account) == "free"


def test_pending_renewal_keeps_the_plan_while_the_provider_retries(owner) -> None:
    subscription(owner.account, plan="team", status=Subscription.Status.PENDING)
    assert entitlements_for(owner.account).team_members is True


def test_unpaid_created_subscription_grants_nothing(owner) -> None:
    subscription(owner.account, status=Subscription.Status.CREATED)
    assert plan_for(owner.account) == "free"


def test_highest_granting_plan_wins(owner) -> None:
    subscription(owner.account, plan="pro", sub_id="sub_A")
    subscription(owner.account, plan="team", sub_id="sub_B")
    assert plan_for(owner.account) == "team"


def test_cancelled_at_period_end_keeps_plan_until_the_end_then_free(owner) -> None:
    sub = subscription(owner.account, plan="pro")
    sub.cancel_at_period_end = True
    sub.current_period_end = timezone.now() + timedelta(days=3)
    sub.save()
    assert plan_for(owner.account) == "pro"
    with time_machine.travel(timezone.now() + timedelta(days=3, seconds=1)):
        assert plan_for(owner.account) == "free"


def test_other_accounts_subscription_does_not_count(owner, outsider) -> None:
    subscription(outsider.account, plan="team")
    assert plan_for(owner.account) == "free"
