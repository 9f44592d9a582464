"""Fill RunDailyUsage and RunMonthlyUsage from the usage records kept so far, so "top runs
this month" keeps the month's past days after the upgrade. The per-minute rollup keeps
both current from then on.

Per account: one grouped query by local day in the account's zone (as the rollup does),
then the month rows as the sums of those day rows. Self-contained on purpose: migrations
must not import app code that will change.
"""

from __future__ import annotations

import zoneinfo
from typing import Any

from django.db import migrations
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate, TruncMonth


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def backfill(apps: Any, schema_editor: Any) -> None:
    Account = apps.get_model("accounts", "Account")
    UsageRecord = apps.get_model("budgets", "UsageRecord")
    RunDailyUsage = apps.get_model("budgets", "RunDailyUsage")
    RunMonthlyUsage = apps.get_model("budgets", "RunMonthlyUsage")
    for account_id, tz_name in Account.objects.values_list("pk", "timezone").iterator():
        days = (
            UsageRecord.objects.filter(account_id=account_id)
            .exclude(run_id="")
            .annotate(local_day=TruncDate("created_at", tzinfo=_zone(tz_name)))
            .values("local_day", "run_id")
            .annotate(cost=Sum("cost_micros"), saved=Sum("saved_micros"), n=Count("id"))
            .order_by()
        )
        RunDailyUsage.objects.bulk_create(
            (
                RunDailyUsage(
                    account_id=account_id,
                    day=r["local_day"],
                    run_id=r["run_id"],
                    cost_micros=r["cost"] or 0,
                    saved_micros=r["saved"] or 0,
                    requests=r["n"],
                )
                for r in days.iterator()
            ),
            batch_size=500,
        )
        months = (
            RunDailyUsage.objects.filter(account_id=account_id)
            .annotate(first=TruncMonth("day"))
            .values("first", "run_id")
            .annotate(cost=Sum("cost_micros"), saved=Sum("saved_micros"), n=Sum("requests"))
            .order_by()
        )
        RunMonthlyUsage.objects.bulk_create(
            (
                RunMonthlyUsage(
                    account_id=account_id,
                    month=r["first"],
                    run_id=r["run_id"],
                    cost_micros=r["cost"] or 0,
                    saved_micros=r["saved"] or 0,
                    requests=r["n"],
                )
                for r in months.iterator()
            ),
            batch_size=500,
        )


class Migration(migrations.Migration):
    dependencies = [
        ("budgets", "0005_run_rollups_and_day_watermark"),
    ]

    operations = [
        # No rollup writes these tables meanwhile: workers still on the old code do not
        # know them, and new ones start after the migrations.
        migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True),
    ]
