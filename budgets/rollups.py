"""UsageRecord → DailyUsage: one row per account, key, model and local day.

A day is the account's local calendar day (its IANA time zone), so a chart bar is
what the user calls "Tuesday". Rolling up a day recomputes that day's rows from the
raw records inside one transaction, holding the account row's lock: running it
twice, or two workers at once, leaves the same rows.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from accounts.models import Account

from .models import DailyUsage, UsageRecord

# Records are stamped when the request starts but written when it settles; a long stream
# lands minutes later. The per-minute run looks back this far for accounts to refresh.
RECENT_WINDOW = dt.timedelta(minutes=15)


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


def rollup_day(*, account: Account, day: dt.date) -> RollupResult:
    """Recompute `account`'s DailyUsage rows for local `day` from its usage records."""
    start, end = local_day_bounds(account.tz, day)
    with transaction.atomic():
        # Serialises rollups of one account: a concurrent run waits here and then
        # recomputes the same rows instead of colliding on the unique constraint.
        Account.objects.select_for_update().filter(pk=account.pk).first()
        aggregates = (
            UsageRecord.objects.filter(account=account, created_at__gte=start, created_at__lt=end)
            .values("api_key_id", "model")
            .annotate(
                cost=Sum("cost_micros"),
                saved=Sum("saved_micros"),
                n=Count("id"),
                hits=Count("id", filter=Q(cache_status=UsageRecord.CacheStatus.HIT)),
                tokens_in=Sum("input_tokens"),
                tokens_out=Sum("output_tokens"),
            )
            .order_by()
        )
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
    return RollupResult(
        account_id=account.pk,
        day=day,
        rows=len(merged),
        requests=sum(r.requests for r in merged.values()),
    )


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
