"""Fill RunDailyUsage from the usage records kept so far, so "top runs this month" keeps
its past days after the upgrade. The per-minute rollup keeps it current from then on.

One grouped query per account, by local day in the account's zone (as the rollup does).
Self-contained on purpose: migrations must not import app code that will change.
"""

from __future__ import annotations

import zoneinfo
from typing import Any

from django.db import migrations
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def backfill(apps: Any, schema_editor: Any) -> None:
    Account = apps.get_model("accounts", "Account")
    UsageRecord = apps.get_model("budgets", "UsageRecord")
    RunDailyUsage = apps.get_model("budgets", "RunDailyUsage")
    for account_id, tz_name in Account.objects.values_list("pk", "timezone").iterator():
        rows = (
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
                for r in rows.iterator()
            ),
            batch_size=500,
            # A rollup that ran meanwhile wrote the same day from the same records.
            ignore_conflicts=True,
        )


class Migration(migrations.Migration):
    dependencies = [
        ("budgets", "0005_run_daily_usage_and_rollup_watermark"),
    ]

    operations = [
        migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True),
    ]
