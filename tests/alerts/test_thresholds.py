from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.core.cache import cache
from django.db import connection

from accounts.models import Account
from budgets import alerts
from budgets.models import AlertFired, Cap
from keys.models import ApiKey
from tests.alerts.conftest import charge
from tests.conftest import Person

USD = 1_000_000


@pytest.fixture(autouse=True)
def _no_breaker(settings: Any) -> None:
    # These tests spend dollars within seconds on a new key, which is what the breaker
    # catches; it has its own tests.
    settings.SPIKE_BREAKER_ENABLED = False


def a_key(account: Account, name: str = "default") -> ApiKey:
    key, _ = ApiKey.objects.get_or_create(
        account=account,
        name=name,
        defaults={"prefix": f"bllm_{name}{account.pk}", "digest": "0" * 64},
    )
    return key


def spend(account: Account, micros: int, *, api_key: ApiKey | None = None) -> None:
    charge(account, micros, api_key=api_key or a_key(account))


def monthly_cap(account: Account, limit_usd: int = 10, thresholds: list[int] | None = None) -> Cap:
    return Cap.objects.create(
        account=account,
        scope=Cap.Scope.ACCOUNT,
        period=Cap.Period.MONTH,
        limit_micros=limit_usd * USD,
        alert_thresholds=thresholds if thresholds is not None else [50, 80, 100],
    )


def two_workers_evaluate(account_id: int) -> None:
    """Two threads (each with its own database connection) evaluate at the same instant."""
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait(timeout=10)
            alerts.alerts_evaluate(account_id=account_id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors


@pytest.mark.django_db(transaction=True)
def test_thresholds_fire_once_each_across_two_concurrent_workers(owner: Person) -> None:
    # Mark an evaluation as already queued, so recording the spend does not evaluate it
    # first: the two workers below are the ones that race.
    cache.set(alerts._pending_key(owner.account.pk), 1, timeout=300)
    cap = monthly_cap(owner.account)
    spend(owner.account, 5_500_000)  # 55 %
    two_workers_evaluate(owner.account.pk)
    assert list(AlertFired.objects.filter(cap=cap).values_list("threshold", flat=True)) == [50]
    assert len(mail.outbox) == 1
    assert "at 50%" in mail.outbox[0].subject

    two_workers_evaluate(owner.account.pk)  # nothing new crossed
    assert len(mail.outbox) == 1

    spend(owner.account, 3_000_000)  # 85 %
    two_workers_evaluate(owner.account.pk)
    spend(owner.account, 1_500_000)  # 100 %
    two_workers_evaluate(owner.account.pk)
    two_workers_evaluate(owner.account.pk)

    assert sorted(AlertFired.objects.filter(cap=cap).values_list("threshold", flat=True)) == [
        50,
        80,
        100,
    ]
    assert [m.subject for m in mail.outbox] == [
        "[BudgetLLM] Monthly account cap at 50%",
        "[BudgetLLM] Monthly account cap at 80%",
        "[BudgetLLM] Monthly account cap at 100%",
    ]
    assert mail.outbox[0].to == ["owner@example.com"]


@pytest.mark.django_db(transaction=True)
def test_a_jump_past_several_thresholds_sends_one_alert_and_arms_none_again(owner: Person) -> None:
    cap = monthly_cap(owner.account)
    spend(owner.account, 10_200_000)
    alerts.alerts_evaluate(account_id=owner.account.pk)
    alerts.alerts_evaluate(account_id=owner.account.pk)
    assert sorted(AlertFired.objects.filter(cap=cap).values_list("threshold", flat=True)) == [
        50,
        80,
        100,
    ]
    assert [m.subject for m in mail.outbox] == ["[BudgetLLM] Monthly account cap at 100%"]


@pytest.mark.parametrize(
    ("zone", "last_day_utc", "first_day_utc", "old_key", "new_key"),
    [
        # Kolkata is UTC+5:30: 1 December starts at 30 Nov 18:30 UTC.
        (
            "Asia/Kolkata",
            datetime(2026, 11, 30, 18, 0, tzinfo=UTC),
            datetime(2026, 11, 30, 19, 0, tzinfo=UTC),
            "month:2026-11",
            "month:2026-12",
        ),
        # Los Angeles is UTC-8 in December: 1 December starts at 08:00 UTC.
        (
            "America/Los_Angeles",
            datetime(2026, 12, 1, 7, 0, tzinfo=UTC),
            datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
            "month:2026-11",
            "month:2026-12",
        ),
    ],
)
@pytest.mark.django_db(transaction=True)
def test_month_rollover_in_the_accounts_zone_rearms_thresholds(
    owner: Person,
    zone: str,
    last_day_utc: datetime,
    first_day_utc: datetime,
    old_key: str,
    new_key: str,
) -> None:
    owner.account.timezone = zone
    owner.account.save()
    cap = monthly_cap(owner.account)
    with time_machine.travel(last_day_utc, tick=False):
        spend(owner.account, 6 * USD)
        alerts.alerts_evaluate(account_id=owner.account.pk)
    with time_machine.travel(first_day_utc, tick=False):
        alerts.alerts_evaluate(account_id=owner.account.pk)  # new month: nothing spent yet
        assert len(mail.outbox) == 1
        spend(owner.account, 6 * USD)
        alerts.alerts_evaluate(account_id=owner.account.pk)
    fired = AlertFired.objects.filter(cap=cap).order_by("pk")
    assert [(f.window_key, f.threshold) for f in fired] == [(old_key, 50), (new_key, 50)]
    assert len(mail.outbox) == 2
    assert "resets 2027-01-01 00:00 " + zone in mail.outbox[1].body


@pytest.mark.django_db(transaction=True)
def test_alert_says_which_cap_spent_limit_reset_and_links_the_dashboard(
    owner: Person, settings
) -> None:  # type: ignore[no-untyped-def]
    settings.SITE_URL = "https://budgetllm.example.com"
    owner.account.timezone = "Asia/Kolkata"
    owner.account.save()
    key = ApiKey.objects.create(
        account=owner.account, name="prod", prefix="bllm_abc123", digest="0" * 64
    )
    Cap.objects.create(
        account=owner.account,
        scope=Cap.Scope.KEY,
        api_key=key,
        period=Cap.Period.DAY,
        limit_micros=2 * USD,
        alert_thresholds=[80],
    )
    with time_machine.travel(datetime(2026, 11, 23, 10, 0, tzinfo=UTC), tick=False):
        spend(owner.account, 1_700_000, api_key=key)
        spend(owner.account, 5 * USD, api_key=a_key(owner.account, "other"))  # not this cap
        alerts.alerts_evaluate(account_id=owner.account.pk)
    [message] = mail.outbox
    assert message.subject == "[BudgetLLM] Daily cap on key “prod” at 80%"
    assert "$1.70 of $2.00 spent; resets 2026-11-24 00:00 Asia/Kolkata" in message.body
    assert "Dashboard: https://budgetllm.example.com/dashboard/" in message.body


@pytest.mark.django_db(transaction=True)
def test_a_disabled_email_channel_gets_nothing(owner: Person) -> None:
    [channel] = alerts.alert_channels_for(account=owner.account)
    alerts.alert_channel_set_enabled(channel=channel, enabled=False)
    monthly_cap(owner.account)
    spend(owner.account, 6 * USD)
    alerts.alerts_evaluate(account_id=owner.account.pk)
    assert AlertFired.objects.count() == 1
    assert mail.outbox == []


@pytest.mark.django_db(transaction=True)
def test_settling_spend_through_the_ledger_queues_the_alert_check(owner: Person) -> None:
    monthly_cap(owner.account)
    spend(owner.account, 6 * USD)  # no explicit evaluation: the recorded settle queues it
    assert AlertFired.objects.filter(threshold=50).count() == 1
    assert len(mail.outbox) == 1
