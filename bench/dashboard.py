"""Dashboard benchmark: p95 of the dashboard page and each chart partial with 1,000,000
usage records in one account, and the rollup of one day of 100,000 records.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench .venv/bin/python bench/dashboard.py
    .venv/bin/python bench/dashboard.py --records 100000 --samples 20   # a quicker look

Seeds (once; reused on later runs) through `manage.py seed_demo`, then measures through
Django's test client (the whole middleware stack, no network). Before measuring it does
what beat does every minute (roll up today) and then writes a live tail of records that
rollup has not seen (`--tail`), so the page pays for both halves of today's figures.
Targets: p95 ≤ 150 ms, rollup ≤ 10 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budgetllm_site.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from accounts.models import Account, User  # noqa: E402
from accounts.services import user_get_or_create  # noqa: E402
from budgets.models import DailyUsage, RunDailyUsage, RunMonthlyUsage, UsageRecord  # noqa: E402
from budgets.rollups import local_day_bounds, local_today, rollup_day  # noqa: E402

P95_TARGET_MS = 150.0
ROLLUP_TARGET_S = 10.0


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, int(round(0.95 * len(ordered))) - 1)]


def owner_account(email: str) -> tuple[User, Account]:
    user, _ = user_get_or_create(email=email, timezone_name="Asia/Kolkata")
    account = Account.objects.get(memberships__user=user, memberships__role="owner")
    return user, account


def ensure_seeded(email: str, records: int) -> Account:
    _user, account = owner_account(email)
    have = UsageRecord.objects.filter(account=account).count()
    if have < records:
        print(f"seeding {records:,} records into {email} (have {have:,}) ...", flush=True)
        call_command("seed_demo", email=email, records=records, reset=True, batch=10_000)
        if connection.vendor == "postgresql":
            with connection.cursor() as cur:
                cur.execute("VACUUM ANALYZE budgets_usagerecord")
                cur.execute("VACUUM ANALYZE budgets_dailyusage")
    else:
        print(f"reusing {have:,} records in {email}")
    return account


def add_live_tail(account: Account, count: int) -> None:
    """`count` requests stamped in the last minute, after today's rollup: the slice the
    dashboard aggregates live (a quarter of them tagged with a run, as in seed_demo)."""
    now = timezone.now()
    keys = list(account.api_keys.all()[:4])
    runs = list(
        UsageRecord.objects.filter(account=account)
        .exclude(run_id="")
        .values_list("run_id", flat=True)
        .order_by("run_id")
        .distinct()[:50]
    ) or ["run-tail"]
    UsageRecord.objects.bulk_create(
        UsageRecord(
            account=account,
            api_key=keys[i % len(keys)] if keys else None,
            endpoint="chat.completions",
            model="gpt-4o-mini",
            run_id=runs[i % len(runs)] if i % 4 == 0 else "",
            input_tokens=700,
            output_tokens=180,
            cost_micros=0 if i % 10 < 3 else 213,
            saved_micros=213 if i % 10 < 3 else 0,
            cache_status="HIT" if i % 10 < 3 else "MISS",
            http_status=200,
            latency_ms=400,
            created_at=now - dt.timedelta(seconds=60 * (count - i) / count),
        )
        for i in range(count)
    )


def measure(client: Client, url: str, samples: int, htmx: bool) -> list[float]:
    headers = {"HX-Request": "true"} if htmx else {}
    for _ in range(3):  # warm caches and connections
        assert client.get(url, headers=headers).status_code == 200, url
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        response = client.get(url, headers=headers)
        out.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, url
    return out


def ensure_rollup_day(email: str, records: int) -> tuple[Account, dt.date]:
    """One local day (yesterday) holding `records` records in its own account."""
    _user, account = owner_account(email)
    day = timezone.now().astimezone(account.tz).date() - dt.timedelta(days=1)
    start, end = local_day_bounds(account.tz, day)
    have = UsageRecord.objects.filter(
        account=account, created_at__gte=start, created_at__lt=end
    ).count()
    tagged = UsageRecord.objects.filter(account=account).exclude(run_id="").exists()
    if have < records or not tagged:
        print(f"seeding {records:,} records into one day of {email} ...", flush=True)
        UsageRecord.objects.filter(account=account).delete()
        models = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "text-embedding-3-small"]
        step = (end - start) / records
        batch: list[UsageRecord] = []
        for i in range(records):
            hit = i % 10 < 3
            batch.append(
                UsageRecord(
                    request_id=uuid.uuid4(),
                    account=account,
                    api_key=None,
                    endpoint="chat.completions",
                    model=models[i % 4],
                    # A quarter of the requests belong to one of 500 agent runs.
                    run_id=f"run-{i // 4 % 500:03d}" if i % 4 == 0 else "",
                    input_tokens=500,
                    output_tokens=200,
                    cost_micros=0 if hit else 300,
                    saved_micros=300 if hit else 0,
                    cache_status="HIT" if hit else "MISS",
                    http_status=200,
                    latency_ms=100,
                    created_at=start + step * i,
                )
            )
            if len(batch) == 10_000:
                with transaction.atomic():
                    UsageRecord.objects.bulk_create(batch)
                batch = []
        with transaction.atomic():
            UsageRecord.objects.bulk_create(batch)
        if connection.vendor == "postgresql":
            with connection.cursor() as cur:
                cur.execute("ANALYZE budgets_usagerecord")
    return account, day


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rollup-records", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument(
        "--tail", type=int, default=200, help="records written after the last rollup"
    )
    parser.add_argument("--email", default="bench@budgetllm.local")
    args = parser.parse_args()

    print(f"database: {connection.vendor}")
    account = ensure_seeded(args.email, args.records)
    # What beat does every minute, then requests that arrive after it.
    t0 = time.perf_counter()
    today = rollup_day(account=account, day=local_today(account.tz))
    minute_s = time.perf_counter() - t0
    add_live_tail(account, args.tail)
    user = User.objects.get(email=args.email)
    client = Client(SERVER_NAME="127.0.0.1")
    client.force_login(user, backend="allauth.account.auth_backends.AuthenticationBackend")

    results: list[tuple[str, float, float]] = []
    pages = (
        [("dashboard page", "/dashboard/", False)]
        + [(f"chart partial {d} days", f"/dashboard/chart/?days={d}", True) for d in (7, 30, 90)]
        + [("recent requests partial", "/dashboard/requests/?page=2", True)]
    )
    for label, url, htmx in pages:
        samples = measure(client, url, args.samples, htmx)
        results.append((label, statistics.median(samples), p95(samples)))

    rollup_account, day = ensure_rollup_day(
        args.email.replace("@", "+rollup@"), args.rollup_records
    )
    # From scratch (the day's first rollup), then again over the rows it wrote.
    for rollup_model in (DailyUsage, RunDailyUsage, RunMonthlyUsage):
        rollup_model.objects.filter(account=rollup_account).delete()
    t0 = time.perf_counter()
    result = rollup_day(account=rollup_account, day=day)
    rollup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rollup_day(account=rollup_account, day=day)
    rerun_s = time.perf_counter() - t0

    n = UsageRecord.objects.filter(account=account).count()
    print(f"\nrecords in the dashboard account: {n:,}")
    print(f"{'what':32} {'p50 ms':>8} {'p95 ms':>8}  target p95 ≤ {P95_TARGET_MS:.0f} ms")
    ok = True
    for label, p50, p95_ms in results:
        flag = "ok" if p95_ms <= P95_TARGET_MS else "SLOW"
        ok &= p95_ms <= P95_TARGET_MS
        print(f"{label:32} {p50:8.1f} {p95_ms:8.1f}  {flag}")
    flag = "ok" if rollup_s <= ROLLUP_TARGET_S else "SLOW"
    ok &= rollup_s <= ROLLUP_TARGET_S
    print(
        f"rollup of one day ({result.requests:,} records → {result.rows} rows, "
        f"{result.run_rows} run rows): {rollup_s:.2f} s (again: {rerun_s:.2f} s)  "
        f"target ≤ {ROLLUP_TARGET_S:.0f} s  {flag}"
    )
    print(
        f"per-minute rollup of today in the dashboard account ({today.requests:,} records, "
        f"{today.run_rows:,} run rows): {minute_s:.2f} s; live tail: {args.tail} records"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
