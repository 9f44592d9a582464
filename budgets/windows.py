"""Cap windows: calendar days and months in the account's own time zone.

A window is identified by its label (`2026-11-27`, `2026-11`) and becomes part of the
counter key, so a new day is a new counter: counters are never reset or deleted to start
a period. Run caps have no time window; their counter is keyed on the run id.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

DAY = "day"
MONTH = "month"
RUN = "run"


@dataclass(frozen=True)
class Window:
    period: str  # day / month / run
    label: str  # "2026-11-27", "2026-11", or "" for a run
    start: dt.datetime | None  # aware, in the account's zone; None for runs
    resets_at: dt.datetime | None  # aware start of the next window; None for runs


def zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        # An account's zone is validated when set; a bad value must not open the caps.
        return zoneinfo.ZoneInfo("UTC")


def _local_midnight(day: dt.date, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    # Midnight may not exist on a DST change day in a few zones (clocks jump 00:00 →
    # 01:00); zoneinfo resolves such a wall time with the pre-transition offset, which
    # still lands on the first instant of the local day once normalised through UTC.
    return dt.datetime.combine(day, dt.time(0), tzinfo=tz).astimezone(dt.UTC).astimezone(tz)


def window_for(*, period: str, now: dt.datetime, tz_name: str) -> Window:
    if period == RUN:
        return Window(period=RUN, label="", start=None, resets_at=None)
    tz = zone(tz_name)
    local = now.astimezone(tz)
    if period == DAY:
        today = local.date()
        return Window(
            period=DAY,
            label=today.isoformat(),
            start=_local_midnight(today, tz),
            resets_at=_local_midnight(today + dt.timedelta(days=1), tz),
        )
    if period == MONTH:
        first = local.date().replace(day=1)
        following = (first + dt.timedelta(days=32)).replace(day=1)
        return Window(
            period=MONTH,
            label=first.strftime("%Y-%m"),
            start=_local_midnight(first, tz),
            resets_at=_local_midnight(following, tz),
        )
    raise ValueError(f"unknown period {period!r}")


def describe_reset(resets_at: dt.datetime | None) -> str:
    """'resets 2026-12-01 00:00 Asia/Kolkata' — or, for runs, that it never does."""
    if resets_at is None:
        return "run caps do not reset; start a new run (a new X-BudgetLLM-Run-Id)"
    return f"resets {resets_at:%Y-%m-%d %H:%M} {resets_at.tzinfo}"
