"""Today's figures and top runs: the rollups plus, live, the records they have not read."""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo

import pytest
import time_machine
from django.urls import reverse

from budgets.models import DailyUsage, RunDailyUsage, UsageRecord
from budgets.rollups import rollup_day
from budgets.selectors import LOOKUP_BATCH
from tests.dashboard.conftest import make_key, record

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _frozen():  # type: ignore[no-untyped-def]
    with time_machine.travel(NOW, tick=False):
        yield


def _page(person):  # type: ignore[no-untyped-def]
    response = person.client.get(reverse("dashboard"))
    assert response.status_code == 200
    return response.context


def _runs(context) -> list[tuple[str, int, int]]:  # type: ignore[no-untyped-def]
    return [(r.run_id, r.cost, r.n) for r in context["runs"]]


def test_today_is_the_rollup_plus_records_after_it_counted_once(owner, key) -> None:  # type: ignore[no-untyped-def]
    record(owner.account, key, NOW - dt.timedelta(hours=2), cost=1_000, run_id="a")
    record(owner.account, key, NOW - dt.timedelta(hours=1), saved=50, hit=True)
    rollup_day(account=owner.account, day=NOW.date())
    record(owner.account, key, NOW - dt.timedelta(seconds=20), cost=300, run_id="a")
    record(owner.account, None, NOW - dt.timedelta(seconds=10), cost=7, model="gpt-4o")

    context = _page(owner)

    today = context["header"].today
    assert (today.cost_micros, today.saved_micros, today.requests, today.cache_hits) == (
        1_307,
        50,
        4,
        1,
    )
    assert context["header"].month.cost_micros == 1_307
    assert _runs(context) == [("a", 1_300, 2)]
    assert [(r.label, r.totals.cost_micros) for r in context["by_model"]] == [
        ("gpt-4o-mini", 1_300),
        ("gpt-4o", 7),
    ]
    # The next rollup takes the tail in: same figures, nothing counted twice.
    rollup_day(account=owner.account, day=NOW.date())
    again = _page(owner)
    assert again["header"].today.cost_micros == 1_307 and again["header"].today.requests == 4
    assert _runs(again) == [("a", 1_300, 2)]


def test_chart_partial_counts_today_like_the_header(owner, key) -> None:  # type: ignore[no-untyped-def]
    record(owner.account, key, NOW - dt.timedelta(hours=1), cost=1_000_000)
    rollup_day(account=owner.account, day=NOW.date())
    record(owner.account, key, NOW - dt.timedelta(seconds=5), cost=500_000)

    response = owner.client.get(
        reverse("dashboard_chart") + "?days=7", headers={"HX-Request": "true"}
    )

    body = response.content.decode()
    data = json.loads(
        body.split('id="chart-data" type="application/json">')[1].split("</script>")[0]
    )
    assert data["spend"][0]["usd"][-1] == 1.5
    assert _page(owner)["chart"]["spend"][0]["usd"][-1] == 1.5


def test_a_late_record_stamped_before_the_rollup_waits_for_the_next_one(owner, key) -> None:  # type: ignore[no-untyped-def]
    """A long stream is stamped when it starts and written when it ends: if the rollup
    ran in between, the record is counted from the next rollup on (a minute later)."""
    record(owner.account, key, NOW - dt.timedelta(minutes=1), cost=100)
    rollup_day(account=owner.account, day=NOW.date())
    record(owner.account, key, NOW - dt.timedelta(minutes=3), cost=40, run_id="stream")

    assert _page(owner)["header"].today.cost_micros == 100

    rollup_day(account=owner.account, day=NOW.date())
    context = _page(owner)
    assert context["header"].today.cost_micros == 140
    assert _runs(context) == [("stream", 40, 1)]


def test_rows_without_a_watermark_are_ignored_and_today_counted_live(owner, key) -> None:  # type: ignore[no-untyped-def]
    """Rows written before the watermark existed: counting records after an unknown point
    could count some twice, so today comes from the records alone until the next rollup."""
    record(owner.account, key, NOW - dt.timedelta(hours=1), cost=600, run_id="a")
    rollup_day(account=owner.account, day=NOW.date())
    DailyUsage.objects.filter(account=owner.account).update(records_through=None)
    record(owner.account, key, NOW - dt.timedelta(minutes=1), cost=5, run_id="a")

    context = _page(owner)

    assert context["header"].today.cost_micros == 605
    assert context["header"].month.cost_micros == 605
    assert _runs(context) == [("a", 605, 2)]


def test_top_runs_add_past_days_today_and_the_live_tail(owner, key) -> None:  # type: ignore[no-untyped-def]
    dev = make_key(owner.account, "dev")
    for day in (2, 10):
        at = dt.datetime(2026, 11, day, 9, 0, tzinfo=dt.UTC)
        record(owner.account, key, at, cost=1_000, run_id="nightly")
        record(owner.account, dev, at, cost=10, run_id="small")
        rollup_day(account=owner.account, day=at.date())
    last_month = dt.datetime(2026, 10, 31, 9, 0, tzinfo=dt.UTC)
    record(owner.account, key, last_month, cost=99_999, run_id="october")
    rollup_day(account=owner.account, day=last_month.date())
    record(owner.account, key, NOW - dt.timedelta(hours=1), cost=500, run_id="nightly")
    rollup_day(account=owner.account, day=NOW.date())
    record(owner.account, dev, NOW - dt.timedelta(seconds=30), cost=3_000, run_id="fresh")
    record(owner.account, key, NOW - dt.timedelta(seconds=30), cost=1, run_id="nightly")

    assert _runs(_page(owner)) == [("fresh", 3_000, 1), ("nightly", 2_501, 4), ("small", 20, 2)]


def test_a_run_outside_the_rolled_up_top_ten_climbs_in_with_live_spend(owner, key) -> None:  # type: ignore[no-untyped-def]
    earlier = NOW - dt.timedelta(days=2)
    for i in range(12):
        record(owner.account, key, earlier, cost=100 + i, run_id=f"run-{i:02d}")
    rollup_day(account=owner.account, day=earlier.date())
    # run-00 is last of twelve in the rollup; 150 µ$ more now puts it first at 250.
    record(owner.account, key, NOW - dt.timedelta(seconds=5), cost=150, run_id="run-00")

    runs = _runs(_page(owner))

    assert len(runs) == 10
    assert runs[0] == ("run-00", 250, 2)
    assert [r[0] for r in runs[1:]] == [f"run-{i:02d}" for i in range(11, 2, -1)]


def test_a_run_that_loses_spend_lets_the_next_one_into_the_top_ten(owner, key) -> None:  # type: ignore[no-untyped-def]
    """Today's rows without a watermark are taken out and today counted live; a run whose
    records are gone by then drops out, and the eleventh run (yesterday's) moves up."""
    yesterday = NOW - dt.timedelta(days=1)
    record(owner.account, key, yesterday, cost=100, run_id="run-00")
    rollup_day(account=owner.account, day=yesterday.date())
    for i in range(1, 11):
        record(owner.account, key, NOW - dt.timedelta(hours=1), cost=100 + i, run_id=f"run-{i:02d}")
    rollup_day(account=owner.account, day=NOW.date())
    DailyUsage.objects.filter(account=owner.account).update(records_through=None)
    UsageRecord.objects.filter(run_id="run-10").delete()

    runs = _runs(_page(owner))

    assert [r[0] for r in runs] == [f"run-{i:02d}" for i in range(9, -1, -1)]


def test_top_runs_stay_right_when_hundreds_of_runs_are_live(owner, key) -> None:  # type: ignore[no-untyped-def]
    """The rollup has stopped for a while: too many live runs for one IN list."""
    earlier = NOW - dt.timedelta(days=2)
    for i in range(12):
        record(owner.account, key, earlier, cost=100 + i, run_id=f"run-{i:02d}")
    rollup_day(account=owner.account, day=earlier.date())
    UsageRecord.objects.bulk_create(
        UsageRecord(
            account=owner.account,
            api_key=key,
            endpoint="chat.completions",
            model="gpt-4o-mini",
            run_id=f"live-{i:03d}",
            cost_micros=1,
            cache_status="MISS",
            http_status=200,
            created_at=NOW - dt.timedelta(minutes=30),
        )
        for i in range(LOOKUP_BATCH + 1)
    )
    record(owner.account, key, NOW - dt.timedelta(seconds=5), cost=150, run_id="run-00")

    runs = _runs(_page(owner))

    assert runs[0] == ("run-00", 250, 2)
    assert [r[0] for r in runs[1:]] == [f"run-{i:02d}" for i in range(11, 2, -1)]


@pytest.mark.parametrize("zone", ["Pacific/Auckland", "America/Los_Angeles"])
def test_top_runs_of_the_month_follow_the_account_zone(owner, key, zone) -> None:  # type: ignore[no-untyped-def]
    """Auckland is already in November when UTC is not; Los Angeles is still in October
    (and leaves summer time that night)."""
    owner.account.timezone = zone
    owner.account.save()
    tz = zoneinfo.ZoneInfo(zone)
    record(owner.account, key, dt.datetime(2026, 10, 31, 23, 30, tzinfo=tz), cost=900, run_id="oct")
    record(owner.account, key, dt.datetime(2026, 11, 1, 0, 30, tzinfo=tz), cost=5, run_id="nov")
    for day in (dt.date(2026, 10, 31), dt.date(2026, 11, 1)):
        rollup_day(account=owner.account, day=day)

    assert set(RunDailyUsage.objects.values_list("day", "run_id")) == {
        (dt.date(2026, 10, 31), "oct"),
        (dt.date(2026, 11, 1), "nov"),
    }
    assert _runs(_page(owner)) == [("nov", 5, 1)]


def test_top_runs_never_show_another_accounts_runs(owner, outsider, key) -> None:  # type: ignore[no-untyped-def]
    record(owner.account, key, NOW - dt.timedelta(days=1), cost=5, run_id="secret-run")
    rollup_day(account=owner.account, day=(NOW - dt.timedelta(days=1)).date())
    record(owner.account, key, NOW, cost=5, run_id="secret-live")
    mine = make_key(outsider.account, "mine")
    record(outsider.account, mine, NOW, cost=1, run_id="own-run")

    assert _runs(_page(outsider)) == [("own-run", 1, 1)]
