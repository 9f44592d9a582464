from __future__ import annotations

import datetime as dt
import zoneinfo

import time_machine

from budgets.windows import DAY, MONTH, RUN, describe_reset, window_for

UTC = dt.UTC


def test_month_rolls_over_at_local_midnight_in_kolkata() -> None:
    # 2026-11-30 18:29 UTC is 23:59 on Nov 30 in Kolkata (UTC+5:30); a minute later it is December.
    with time_machine.travel(dt.datetime(2026, 11, 30, 18, 29, tzinfo=UTC), tick=False):
        before = window_for(period=MONTH, now=dt.datetime.now(UTC), tz_name="Asia/Kolkata")
    with time_machine.travel(dt.datetime(2026, 11, 30, 18, 30, tzinfo=UTC), tick=False):
        after = window_for(period=MONTH, now=dt.datetime.now(UTC), tz_name="Asia/Kolkata")
    assert before.label == "2026-11" and after.label == "2026-12"
    assert before.resets_at == after.start
    assert after.start == dt.datetime(2026, 11, 30, 18, 30, tzinfo=UTC)
    assert describe_reset(before.resets_at) == "resets 2026-12-01 00:00 Asia/Kolkata"


def test_month_rolls_over_at_local_midnight_in_los_angeles() -> None:
    # Midnight Dec 1 in Los Angeles (PST, UTC-8) is 08:00 UTC: still November there at 07:59.
    with time_machine.travel(dt.datetime(2026, 12, 1, 7, 59, tzinfo=UTC), tick=False):
        before = window_for(period=MONTH, now=dt.datetime.now(UTC), tz_name="America/Los_Angeles")
        kolkata = window_for(period=MONTH, now=dt.datetime.now(UTC), tz_name="Asia/Kolkata")
    with time_machine.travel(dt.datetime(2026, 12, 1, 8, 0, tzinfo=UTC), tick=False):
        after = window_for(period=MONTH, now=dt.datetime.now(UTC), tz_name="America/Los_Angeles")
    assert before.label == "2026-11" and kolkata.label == "2026-12"
    assert after.label == "2026-12"
    assert after.start == dt.datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_day_windows_follow_dst_changes() -> None:
    la = zoneinfo.ZoneInfo("America/Los_Angeles")
    # 2026-11-01: clocks go back, the local day lasts 25 hours.
    fall = window_for(
        period=DAY, now=dt.datetime(2026, 11, 1, 12, tzinfo=la), tz_name="America/Los_Angeles"
    )
    assert fall.resets_at is not None and fall.start is not None
    # (Subtract in UTC: Python subtracts same-zone datetimes by wall clock.)
    assert fall.resets_at.astimezone(UTC) - fall.start.astimezone(UTC) == dt.timedelta(hours=25)
    # 2026-03-08: clocks go forward, 23 hours.
    spring = window_for(
        period=DAY, now=dt.datetime(2026, 3, 8, 12, tzinfo=la), tz_name="America/Los_Angeles"
    )
    assert spring.resets_at is not None and spring.start is not None
    assert spring.resets_at.astimezone(UTC) - spring.start.astimezone(UTC) == dt.timedelta(hours=23)
    assert spring.start.utcoffset() == dt.timedelta(hours=-8)
    assert spring.resets_at.utcoffset() == dt.timedelta(hours=-7)


def test_run_windows_never_reset() -> None:
    run = window_for(period=RUN, now=dt.datetime.now(UTC), tz_name="UTC")
    assert run.resets_at is None and run.label == ""
