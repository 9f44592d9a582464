"""The upgrade fills the run rollups from the records already kept, exactly as the rollup would."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import call_command

from budgets.models import RunDailyUsage, RunMonthlyUsage
from budgets.rollups import rollup_day
from tests.dashboard.conftest import record

BEFORE = "0005_run_rollups_and_day_watermark"
BACKFILL = "0006_backfill_run_rollups"


def _run_rows() -> list[tuple[int, dt.date, str, int, int, int]]:
    return sorted(
        RunDailyUsage.objects.values_list(
            "account_id", "day", "run_id", "cost_micros", "saved_micros", "requests"
        )
    )


def _month_rows() -> list[tuple[int, dt.date, str, int, int, int]]:
    return sorted(
        RunMonthlyUsage.objects.values_list(
            "account_id", "month", "run_id", "cost_micros", "saved_micros", "requests"
        )
    )


@pytest.mark.django_db(transaction=True)
def test_backfill_writes_the_rows_the_rollup_writes_in_each_accounts_zone(  # type: ignore[no-untyped-def]
    owner, outsider
) -> None:
    owner.account.timezone = "Asia/Kolkata"
    owner.account.save()
    outsider.account.timezone = "America/New_York"
    outsider.account.save()
    # 20:00 UTC on 31 October is 1 November in Kolkata and still 31 October in New York.
    evening = dt.datetime(2026, 10, 31, 20, 0, tzinfo=dt.UTC)
    for account in (owner.account, outsider.account):
        record(account, None, evening, cost=300, run_id="agent-1")
        record(
            account, None, evening - dt.timedelta(hours=12), saved=40, hit=True, run_id="agent-1"
        )
        record(account, None, evening, cost=8, run_id="agent-2")
        record(account, None, evening, cost=1_000)  # not a run
    call_command("migrate", "budgets", BEFORE, verbosity=0)
    try:
        call_command("migrate", "budgets", BACKFILL, verbosity=0)
        backfilled = _run_rows(), _month_rows()
        RunDailyUsage.objects.all().delete()
        RunMonthlyUsage.objects.all().delete()
        for account in (owner.account, outsider.account):
            for day in (dt.date(2026, 10, 31), dt.date(2026, 11, 1)):
                rollup_day(account=account, day=day)
        assert backfilled == (_run_rows(), _month_rows())
        days, months = backfilled
        assert [(row[1], row[2]) for row in days if row[0] == owner.account.pk] == [
            (dt.date(2026, 10, 31), "agent-1"),
            (dt.date(2026, 11, 1), "agent-1"),
            (dt.date(2026, 11, 1), "agent-2"),
        ]
        assert [(row[1], row[2], row[5]) for row in months if row[0] == owner.account.pk] == [
            (dt.date(2026, 10, 1), "agent-1", 1),
            (dt.date(2026, 11, 1), "agent-1", 1),
            (dt.date(2026, 11, 1), "agent-2", 1),
        ]
    finally:
        call_command("migrate", "budgets", verbosity=0)
