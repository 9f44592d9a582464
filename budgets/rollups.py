"""UsageRecord → DailyUsage (one row per account, key, model and local day),
RunDailyUsage (one row per account, agent run and local day) and RunMonthlyUsage (one
row per account, agent run and local month, kept by difference from the day rows).

A day is the account's local calendar day (its IANA time zone), so a chart bar is
what the user calls "Tuesday". Rolling up a day recomputes that day's rows from the
raw records inside one transaction, holding the account row's lock: running it
twice, or two workers at once, leaves the same rows. Each day's rows remember the
newest record they include (`DailyUsage.records_through`), so readers can add the
records stamped after it live (budgets.selectors.today_usage).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from typing import NamedTuple

from django.db import transaction
from django.db.models import Count, Max, Q, QuerySet, Sum
from django.utils import timezone

from accounts.models import Account

from .models import DailyUsage, RunDailyUsage, RunMonthlyUsage, UsageRecord

# Records are stamped when the request starts but written when it settles; a long stream
# lands minutes later. The per-minute run looks back this far for accounts to refresh.
RECENT_WINDOW = dt.timedelta(minutes=15)
# Rows per INSERT / ids per DELETE: well under SQLite's limit on query parameters.
BATCH = 500


def local_day_bounds(tz: zoneinfo.ZoneInfo, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a local calendar day as aware datetimes (23 or 25 hours on DST days)."""
    start = dt.datetime.combine(day, dt.time.min, tzinfo=tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min, tzinfo=tz)
    return start, end


def local_today(tz: zoneinfo.ZoneInfo, now: dt.datetime | None = None) -> dt.date:
    return (now or timezone.now()).astimezone(tz).date()


@dataclass(frozen=True)
class RollupResult:
    account_id: int
    day: dt.date
    rows: int
    requests: int
    run_rows: int


def rollup_day(*, account: Account, day: dt.date) -> RollupResult:
    """Recompute `account`'s DailyUsage and RunDailyUsage rows for local `day` from its
    usage records, and bring the RunMonthlyUsage rows of its month along."""
    start, end = local_day_bounds(account.tz, day)
    with transaction.atomic():
        # Serialises rollups of one account: a concurrent run waits here and then
        # recomputes the same rows instead of colliding on the unique constraints.
        Account.objects.select_for_update().filter(pk=account.pk).first()
        records = UsageRecord.objects.filter(
            account=account, created_at__gte=start, created_at__lt=end
        )
        aggregates = list(
            records.values("api_key_id", "model")
            .annotate(
                cost=Sum("cost_micros"),
                saved=Sum("saved_micros"),
                n=Count("id"),
                hits=Count("id", filter=Q(cache_status=UsageRecord.CacheStatus.HIT)),
                tokens_in=Sum("input_tokens"),
                tokens_out=Sum("output_tokens"),
                newest=Max("created_at"),
            )
            .order_by()
        )
        # Read in the same statement as the sums, so it is exactly their watermark.
        through = max((a["newest"] for a in aggregates), default=None)
        rows = [
            DailyUsage(
                account=account,
                api_key_id_or_zero=a["api_key_id"] or 0,
                model=a["model"],
                day=day,
                cost_micros=a["cost"] or 0,
                saved_micros=a["saved"] or 0,
                requests=a["n"],
                cache_hits=a["hits"],
                input_tokens=a["tokens_in"] or 0,
                output_tokens=a["tokens_out"] or 0,
                records_through=through,
            )
            for a in aggregates
        ]
        # Records of a deleted key (api_key NULL) and of key id 0 share a bucket; merge
        # them so the unique constraint holds.
        merged: dict[tuple[int, str], DailyUsage] = {}
        for row in rows:
            bucket = (row.api_key_id_or_zero, row.model)
            if bucket in merged:
                into = merged[bucket]
                for f in (
                    "cost_micros",
                    "saved_micros",
                    "requests",
                    "cache_hits",
                    "input_tokens",
                    "output_tokens",
                ):
                    setattr(into, f, getattr(into, f) + getattr(row, f))
            else:
                merged[bucket] = row
        DailyUsage.objects.filter(account=account, day=day).delete()
        DailyUsage.objects.bulk_create(merged.values())
        run_rows = _rollup_runs(account=account, day=day, records=records, through=through)
    return RollupResult(
        account_id=account.pk,
        day=day,
        rows=len(merged),
        requests=sum(r.requests for r in merged.values()),
        run_rows=run_rows,
    )


class RunSums(NamedTuple):
    cost: int
    saved: int
    n: int

    def plus(self, other: RunSums) -> RunSums:
        return RunSums(self.cost + other.cost, self.saved + other.saved, self.n + other.n)

    def minus(self, other: RunSums) -> RunSums:
        return RunSums(self.cost - other.cost, self.saved - other.saved, self.n - other.n)


NO_RUN_SUMS = RunSums(0, 0, 0)


def _rollup_runs(
    *,
    account: Account,
    day: dt.date,
    records: QuerySet[UsageRecord],
    through: dt.datetime | None,
) -> int:
    """RunDailyUsage rows of `day` from the same records as its DailyUsage rows, and the
    difference they make added to RunMonthlyUsage; returns how many run rows the day has.

    Bounded by `through`: a record committed between the two statements must not be in
    the run rows while also counting as live (it is stamped after the watermark). Only
    runs whose totals changed are rewritten: a busy day has thousands of runs, and the
    per-minute rollup would otherwise rewrite every one of them every minute.
    """
    fresh: dict[str, RunSums] = {}
    if through is not None:
        for a in (
            records.filter(created_at__lte=through)
            .exclude(run_id="")
            .values("run_id")
            .annotate(cost=Sum("cost_micros"), saved=Sum("saved_micros"), n=Count("id"))
            .order_by()
        ):
            fresh[a["run_id"]] = RunSums(int(a["cost"] or 0), int(a["saved"] or 0), a["n"])
    kept = 0
    stale: list[int] = []
    change: dict[str, RunSums] = {}
    existing = RunDailyUsage.objects.filter(account=account, day=day).values_list(
        "pk", "run_id", "cost_micros", "saved_micros", "requests"
    )
    for pk, run_id, cost, saved, n in existing:
        old = RunSums(cost, saved, n)
        if fresh.get(run_id) == old:
            del fresh[run_id]
            kept += 1
        else:
            stale.append(pk)
            change[run_id] = NO_RUN_SUMS.minus(old)
    for run_id, new in fresh.items():
        change[run_id] = change.get(run_id, NO_RUN_SUMS).plus(new)
    for i in range(0, len(stale), BATCH):
        RunDailyUsage.objects.filter(pk__in=stale[i : i + BATCH]).delete()
    RunDailyUsage.objects.bulk_create(
        (
            RunDailyUsage(
                account=account,
                day=day,
                run_id=run_id,
                cost_micros=new.cost,
                saved_micros=new.saved,
                requests=new.n,
            )
            for run_id, new in fresh.items()
        ),
        batch_size=BATCH,
    )
    _run_months_add(account=account, month=day.replace(day=1), change=change)
    return kept + len(fresh)


def _run_months_add(*, account: Account, month: dt.date, change: dict[str, RunSums]) -> None:
    """Add what a day's run rows changed by to their month's rows. By difference rather
    than re-summing the month's days: the history purge deletes old days, and a month's
    total must not shrink for some runs only (those the rollup happens to touch)."""
    runs = sorted(change)
    for i in range(0, len(runs), BATCH):
        chunk = runs[i : i + BATCH]
        current = {
            row.run_id: row
            for row in RunMonthlyUsage.objects.filter(
                account=account, month=month, run_id__in=chunk
            )
        }
        rows = []
        for run_id in chunk:
            row = current.get(run_id)
            was = RunSums(row.cost_micros, row.saved_micros, row.requests) if row else NO_RUN_SUMS
            total = was.plus(change[run_id])
            if total.n > 0:
                rows.append(
                    RunMonthlyUsage(
                        account=account,
                        month=month,
                        run_id=run_id,
                        cost_micros=total.cost,
                        saved_micros=total.saved,
                        requests=total.n,
                    )
                )
        RunMonthlyUsage.objects.filter(pk__in=[row.pk for row in current.values()]).delete()
        RunMonthlyUsage.objects.bulk_create(rows)


def accounts_with_usage_since(since: dt.datetime) -> list[Account]:
    ids = (
        UsageRecord.objects.filter(created_at__gte=since)
        .values_list("account_id", flat=True)
        .distinct()
        .order_by()
    )
    return list(Account.objects.filter(pk__in=list(ids)))


def rollup_recent(*, now: dt.datetime | None = None) -> list[RollupResult]:
    """Every minute: today's rows of each account with recent usage (and yesterday's, in
    the first minutes after its local midnight, for records that settled late)."""
    now = now or timezone.now()
    results = []
    for account in accounts_with_usage_since(now - RECENT_WINDOW):
        today = local_today(account.tz, now)
        results.append(rollup_day(account=account, day=today))
        local_now = now.astimezone(account.tz)
        midnight = dt.datetime.combine(today, dt.time.min, tzinfo=account.tz)
        if local_now - midnight < RECENT_WINDOW:
            results.append(rollup_day(account=account, day=today - dt.timedelta(days=1)))
    return results


def rollup_yesterday(*, now: dt.datetime | None = None) -> list[RollupResult]:
    """Hourly: close the previous local day of every account whose local hour is 0, i.e.
    once per account per day, shortly after its own midnight."""
    now = now or timezone.now()
    results = []
    for account in accounts_with_usage_since(now - dt.timedelta(hours=50)):
        local_now = now.astimezone(account.tz)
        if local_now.hour == 0:
            yesterday = local_now.date() - dt.timedelta(days=1)
            results.append(rollup_day(account=account, day=yesterday))
    return results


def rollup_range(*, account: Account, first: dt.date, last: dt.date) -> int:
    """Roll up every day in [first, last]; for seeding and backfills. Returns rows written."""
    total = 0
    day = first
    while day <= last:
        total += rollup_day(account=account, day=day).rows
        day += dt.timedelta(days=1)
    return total
