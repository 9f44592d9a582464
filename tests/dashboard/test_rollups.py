from __future__ import annotations

import datetime as dt
import threading

import pytest
import time_machine
from django.db import connection

from budgets.models import DailyUsage, RunDailyUsage, RunMonthlyUsage, UsageRecord
from budgets.rollups import rollup_day, rollup_recent, rollup_yesterday
from tests.dashboard.conftest import make_key, record

KOLKATA = dt.timezone(dt.timedelta(hours=5, minutes=30))


def _rows(account):  # type: ignore[no-untyped-def]
    return sorted(
        DailyUsage.objects.filter(account=account).values_list(
            "day",
            "api_key_id_or_zero",
            "model",
            "cost_micros",
            "saved_micros",
            "requests",
            "cache_hits",
        )
    )


def _run_rows(account):  # type: ignore[no-untyped-def]
    return sorted(
        RunDailyUsage.objects.filter(account=account).values_list(
            "day", "run_id", "cost_micros", "saved_micros", "requests"
        )
    )


def _month_rows(account):  # type: ignore[no-untyped-def]
    return sorted(
        RunMonthlyUsage.objects.filter(account=account).values_list(
            "month", "run_id", "cost_micros", "saved_micros", "requests"
        )
    )


def _months_from_days(account):  # type: ignore[no-untyped-def]
    """What the month rows must be: the sums of the run's day rows in each month."""
    sums: dict[tuple[dt.date, str], list[int]] = {}
    for day, run_id, cost, saved, n in _run_rows(account):
        total = sums.setdefault((day.replace(day=1), run_id), [0, 0, 0])
        total[0], total[1], total[2] = total[0] + cost, total[1] + saved, total[2] + n
    return sorted((month, run_id, *total) for (month, run_id), total in sums.items())


def test_rollup_groups_by_local_day_key_and_model(owner, key) -> None:  # type: ignore[no-untyped-def]
    owner.account.timezone = "Asia/Kolkata"
    owner.account.save()
    other = make_key(owner.account, "dev")
    # 23:00 UTC on the 1st is 04:30 on the 2nd in Kolkata.
    record(owner.account, key, dt.datetime(2026, 11, 1, 23, 0, tzinfo=dt.UTC), cost=500)
    record(owner.account, key, dt.datetime(2026, 11, 2, 5, 0, tzinfo=dt.UTC), cost=700)
    record(owner.account, key, dt.datetime(2026, 11, 2, 6, 0, tzinfo=dt.UTC), saved=300, hit=True)
    record(
        owner.account, other, dt.datetime(2026, 11, 2, 6, 0, tzinfo=dt.UTC), model="gpt-4o", cost=9
    )
    record(owner.account, key, dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC), cost=1)  # the 1st

    result = rollup_day(account=owner.account, day=dt.date(2026, 11, 2))

    assert result.requests == 4
    assert _rows(owner.account) == [
        (dt.date(2026, 11, 2), key.pk, "gpt-4o-mini", 1200, 300, 3, 1),
        (dt.date(2026, 11, 2), other.pk, "gpt-4o", 9, 0, 1, 0),
    ]


def test_rollup_twice_gives_the_same_rows(owner, key) -> None:  # type: ignore[no-untyped-def]
    at = dt.datetime(2026, 11, 2, 5, 0, tzinfo=dt.UTC)
    record(owner.account, key, at, cost=700)
    rollup_day(account=owner.account, day=at.date())
    first = _rows(owner.account)
    rollup_day(account=owner.account, day=at.date())
    assert _rows(owner.account) == first
    record(owner.account, key, at, cost=1)
    rollup_day(account=owner.account, day=at.date())
    assert _rows(owner.account)[0][3] == 701


def test_records_of_deleted_keys_roll_up_under_key_zero(owner, key) -> None:  # type: ignore[no-untyped-def]
    at = dt.datetime(2026, 11, 2, 5, 0, tzinfo=dt.UTC)
    record(owner.account, None, at, cost=5)
    record(owner.account, None, at, cost=6)
    rollup_day(account=owner.account, day=at.date())
    assert _rows(owner.account) == [(at.date(), 0, "gpt-4o-mini", 11, 0, 2, 0)]


@pytest.mark.django_db(transaction=True)
def test_concurrent_rollups_of_one_day_leave_one_set_of_rows(owner, key) -> None:  # type: ignore[no-untyped-def]
    if connection.vendor == "sqlite":
        # The in-memory test database uses a shared cache with table locks; the real SQLite
        # file serialises writers with IMMEDIATE transactions instead.
        pytest.skip("needs a server database for real concurrency")
    at = dt.datetime(2026, 11, 2, 5, 0, tzinfo=dt.UTC)
    for i in range(20):
        record(owner.account, key, at + dt.timedelta(minutes=i), cost=100, run_id=f"r{i % 2}")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            rollup_day(account=owner.account, day=at.date())
        except BaseException as exc:  # pragma: no cover - the assertion reports it
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert _rows(owner.account) == [(at.date(), key.pk, "gpt-4o-mini", 2000, 0, 20, 0)]
    assert _run_rows(owner.account) == [
        (at.date(), "r0", 1000, 0, 10),
        (at.date(), "r1", 1000, 0, 10),
    ]
    assert _month_rows(owner.account) == _months_from_days(owner.account)


def test_rollup_recent_refreshes_today_in_the_account_zone(owner, key) -> None:  # type: ignore[no-untyped-def]
    owner.account.timezone = "America/New_York"
    owner.account.save()
    with time_machine.travel(dt.datetime(2026, 11, 3, 3, 0, tzinfo=dt.UTC), tick=False):
        # 22:00 on the 2nd in New York.
        record(owner.account, key, dt.datetime(2026, 11, 3, 2, 55, tzinfo=dt.UTC), cost=42)
        results = rollup_recent()
    assert [(r.day, r.requests) for r in results] == [(dt.date(2026, 11, 2), 1)]


def test_rollup_yesterday_closes_the_day_after_local_midnight_only(owner, key) -> None:  # type: ignore[no-untyped-def]
    owner.account.timezone = "Asia/Kolkata"
    owner.account.save()
    record(
        owner.account, key, dt.datetime(2026, 11, 2, 18, 0, tzinfo=dt.UTC), cost=42
    )  # 23:30 local
    with time_machine.travel(dt.datetime(2026, 11, 2, 18, 5, tzinfo=dt.UTC), tick=False):
        assert rollup_yesterday() == []  # 23:35 local: not yet
    with time_machine.travel(dt.datetime(2026, 11, 2, 19, 5, tzinfo=dt.UTC), tick=False):
        results = rollup_yesterday()  # 00:35 local on the 3rd
    assert [(r.day, r.requests) for r in results] == [(dt.date(2026, 11, 2), 1)]


def test_rollup_writes_run_totals_per_local_day(owner, key) -> None:  # type: ignore[no-untyped-def]
    owner.account.timezone = "Asia/Kolkata"
    owner.account.save()
    other = make_key(owner.account, "dev")
    # 23:00 UTC on the 1st is 04:30 on the 2nd in Kolkata; 18:00 UTC is 23:30 on the 1st.
    record(owner.account, key, dt.datetime(2026, 11, 1, 23, 0, tzinfo=dt.UTC), cost=500, run_id="a")
    record(
        owner.account, other, dt.datetime(2026, 11, 2, 5, 0, tzinfo=dt.UTC), cost=700, run_id="a"
    )
    record(
        owner.account,
        key,
        dt.datetime(2026, 11, 2, 6, 0, tzinfo=dt.UTC),
        saved=300,
        hit=True,
        run_id="b",
    )
    record(owner.account, key, dt.datetime(2026, 11, 2, 6, 0, tzinfo=dt.UTC), cost=9)  # no run
    record(owner.account, key, dt.datetime(2026, 11, 1, 18, 0, tzinfo=dt.UTC), cost=1, run_id="a")

    result = rollup_day(account=owner.account, day=dt.date(2026, 11, 2))

    assert result.run_rows == 2
    assert _run_rows(owner.account) == [
        (dt.date(2026, 11, 2), "a", 1200, 0, 2),
        (dt.date(2026, 11, 2), "b", 0, 300, 1),
    ]


def test_rollup_twice_gives_the_same_run_rows_and_rewrites_only_changed_runs(owner, key) -> None:  # type: ignore[no-untyped-def]
    at = dt.datetime(2026, 11, 2, 5, 0, tzinfo=dt.UTC)
    record(owner.account, key, at, cost=700, run_id="steady")
    record(owner.account, key, at, cost=100, run_id="busy")
    gone = record(owner.account, key, at, cost=5, run_id="gone")
    rollup_day(account=owner.account, day=at.date())
    first = _run_rows(owner.account), _month_rows(owner.account)
    steady_pk = RunDailyUsage.objects.get(run_id="steady").pk

    rollup_day(account=owner.account, day=at.date())
    assert (_run_rows(owner.account), _month_rows(owner.account)) == first

    record(owner.account, key, at + dt.timedelta(minutes=1), cost=1, run_id="busy")
    UsageRecord.objects.filter(pk=gone.pk).delete()
    rollup_day(account=owner.account, day=at.date())
    assert _run_rows(owner.account) == [
        (at.date(), "busy", 101, 0, 2),
        (at.date(), "steady", 700, 0, 1),
    ]
    # A busy day has thousands of runs: the per-minute rollup leaves unchanged ones alone.
    assert RunDailyUsage.objects.get(run_id="steady").pk == steady_pk
    assert _month_rows(owner.account) == [
        (dt.date(2026, 11, 1), "busy", 101, 0, 2),
        (dt.date(2026, 11, 1), "steady", 700, 0, 1),
    ]


def test_month_rows_are_the_sums_of_the_day_rows_across_days_and_months(owner, key) -> None:  # type: ignore[no-untyped-def]
    owner.account.timezone = "Asia/Kolkata"
    owner.account.save()
    # 20:00 UTC on 31 October is already 1 November in Kolkata.
    times = [
        dt.datetime(2026, 10, 30, 9, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 10, 31, 20, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 3, 9, 0, tzinfo=dt.UTC),
    ]
    for i, at in enumerate(times):
        record(owner.account, key, at, cost=100 * (i + 1), run_id="agent")
        record(owner.account, key, at, saved=7, hit=True, run_id=f"solo-{i}")
    days = [dt.date(2026, 10, 30), dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)]
    for day in days + days:  # each day rolled up twice, as beat does
        rollup_day(account=owner.account, day=day)
    # A day that changes again, and one whose records are gone.
    record(owner.account, key, times[2], cost=5, run_id="agent")
    UsageRecord.objects.filter(created_at=times[3]).delete()
    for day in days:
        rollup_day(account=owner.account, day=day)

    assert _month_rows(owner.account) == _months_from_days(owner.account)
    assert [r for r in _month_rows(owner.account) if r[1] == "agent"] == [
        (dt.date(2026, 10, 1), "agent", 100, 0, 1),
        (dt.date(2026, 11, 1), "agent", 505, 0, 3),
    ]


def test_rollup_marks_each_day_with_the_newest_record_it_read(owner, key) -> None:  # type: ignore[no-untyped-def]
    at = dt.datetime(2026, 11, 2, 5, 0, tzinfo=dt.UTC)
    record(owner.account, key, at, cost=1)
    record(owner.account, None, at + dt.timedelta(hours=2), cost=1)  # another row of the day
    rollup_day(account=owner.account, day=at.date())
    marks = set(
        DailyUsage.objects.filter(account=owner.account).values_list("records_through", flat=True)
    )
    assert marks == {at + dt.timedelta(hours=2)}
