from __future__ import annotations

from datetime import date, timedelta

import time_machine
from django.conf import settings
from django.utils import timezone

from billing import tasks
from budgets.models import DailyUsage, RunDailyUsage, RunMonthlyUsage, UsageRecord

from .factories import subscription


def usage(account, days_ago: int) -> UsageRecord:
    now = timezone.now()
    DailyUsage.objects.create(
        account=account, model="gpt-4o-mini", day=(now - timedelta(days=days_ago)).date()
    )
    RunDailyUsage.objects.create(
        account=account, run_id="nightly", day=(now - timedelta(days=days_ago)).date()
    )
    return UsageRecord.objects.create(
        account=account,
        endpoint="chat.completions",
        model="gpt-4o-mini",
        cache_status="MISS",
        http_status=200,
        created_at=now - timedelta(days=days_ago),
    )


def test_nightly_purge_keeps_each_plans_history(owner, outsider) -> None:
    with time_machine.travel("2026-03-01 03:17Z"):
        subscription(outsider.account, plan="pro")
        free_recent, free_old = usage(owner.account, 6), usage(owner.account, 9)
        pro_recent, pro_old = usage(outsider.account, 80), usage(outsider.account, 92)
        result = tasks.usage_history_purge.delay().get()
        left = set(UsageRecord.objects.values_list("pk", flat=True))
        assert left == {free_recent.pk, pro_recent.pk}
        assert free_old.pk not in left and pro_old.pk not in left
        assert result["usage_records"] == 2
        days = set(DailyUsage.objects.values_list("account_id", "day"))
        assert (owner.account.pk, (timezone.now() - timedelta(days=9)).date()) not in days
        assert (owner.account.pk, (timezone.now() - timedelta(days=6)).date()) in days
        assert (outsider.account.pk, (timezone.now() - timedelta(days=80)).date()) in days
        assert set(RunDailyUsage.objects.values_list("account_id", "day")) == days


def test_purge_drops_a_runs_month_total_with_the_last_day_of_that_month(owner) -> None:  # type: ignore[no-untyped-def]
    for first in (date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)):
        RunMonthlyUsage.objects.create(account=owner.account, run_id="nightly", month=first)
    with time_machine.travel("2026-03-01 03:17Z"):  # Free keeps 7 days: from 21 February
        result = tasks.usage_history_purge.delay().get()
    assert result["run_monthly_usage"] == 1
    assert set(RunMonthlyUsage.objects.values_list("month", flat=True)) == {
        date(2026, 2, 1),
        date(2026, 3, 1),
    }


def test_purge_is_scheduled_nightly() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["billing-usage-history-purge"]
    assert entry["task"] == "billing.tasks.usage_history_purge"


def test_purge_keeps_this_months_daily_totals_so_month_spend_stays_right(owner) -> None:  # type: ignore[no-untyped-def]
    with time_machine.travel("2026-03-25 03:17Z"):  # Free keeps 7 days of requests
        old_this_month = usage(owner.account, 22)  # 3 March
        last_month = usage(owner.account, 30)  # 23 February
        tasks.usage_history_purge.delay().get()
        assert not UsageRecord.objects.filter(pk__in=[old_this_month.pk, last_month.pk]).exists()
        days = set(DailyUsage.objects.values_list("day", flat=True))
        assert date(2026, 3, 3) in days
        assert date(2026, 2, 23) not in days
