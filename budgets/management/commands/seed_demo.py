"""Demo data: an account with 90 days of realistic usage, for a full dashboard and the bench.

    python manage.py seed_demo                      # 20,000 records, demo@budgetllm.local
    python manage.py seed_demo --records 1000000    # the benchmark's million

Keys are created with unusable digests (the demo is for looking at, not for proxying).
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
import uuid
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from accounts.models import Account
from accounts.services import user_get_or_create
from budgets.models import Cap, DailyUsage, RunDailyUsage, RunMonthlyUsage, UsageRecord
from budgets.rollups import local_today, rollup_range
from keys.models import ApiKey, ProviderKey
from keys.vault import encrypt

# (model, input $/Mtok, output $/Mtok, share of traffic): list prices, for plausible costs.
MODELS = [
    ("gpt-4o-mini", 0.15, 0.60, 0.55),
    ("gpt-4.1-mini", 0.40, 1.60, 0.20),
    ("gpt-4o", 2.50, 10.00, 0.15),
    ("text-embedding-3-small", 0.02, 0.0, 0.10),
]
KEY_NAMES = ["prod-api", "support-agent", "nightly-evals", "dev-laptop"]
KEY_WEIGHTS = [0.5, 0.25, 0.15, 0.10]
CACHE_HIT_RATE = 0.30
RUN_SHARE = 0.25


def _cost_micros(price_in: float, price_out: float, tokens_in: int, tokens_out: int) -> int:
    return math.ceil(tokens_in * price_in + tokens_out * price_out)  # $/Mtok × tokens = µ$


class Command(BaseCommand):
    help = "Create a demo account with 90 days of realistic usage."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--email", default="demo@budgetllm.local")
        parser.add_argument("--records", type=int, default=20_000)
        parser.add_argument("--days", type=int, default=90)
        parser.add_argument("--timezone", default="Asia/Kolkata")
        parser.add_argument("--batch", type=int, default=5_000)
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument("--reset", action="store_true", help="delete the account's usage first")

    def handle(self, *args: Any, **opts: Any) -> None:
        rng = random.Random(opts["seed"])  # noqa: S311 - demo data, not security
        user, _ = user_get_or_create(email=opts["email"], timezone_name=opts["timezone"])
        account = Account.objects.get(memberships__user=user, memberships__role="owner")
        account.timezone = opts["timezone"]
        account.save(update_fields=["timezone"])
        if opts["reset"]:
            UsageRecord.objects.filter(account=account).delete()
            for rollup in (DailyUsage, RunDailyUsage, RunMonthlyUsage):
                rollup.objects.filter(account=account).delete()
        keys = self._keys(account)
        Cap.objects.get_or_create(
            account=account,
            scope=Cap.Scope.ACCOUNT,
            period=Cap.Period.MONTH,
            api_key=None,
            model="",
            defaults={"limit_micros": 100_000_000, "alert_thresholds": [50, 80, 100]},
        )
        Cap.objects.get_or_create(
            account=account,
            scope=Cap.Scope.ACCOUNT,
            period=Cap.Period.DAY,
            api_key=None,
            model="",
            defaults={"limit_micros": 10_000_000, "alert_thresholds": [50, 80, 100]},
        )
        now = timezone.now()
        days = opts["days"]
        span = dt.timedelta(days=days).total_seconds()
        start = now - dt.timedelta(days=days)
        total = opts["records"]
        batch: list[UsageRecord] = []
        runs = [f"run-{rng.randrange(16**6):06x}" for _ in range(max(10, total // 500))]
        t0 = time.monotonic()
        model_weights = [m[3] for m in MODELS]
        for i in range(total):
            # Growth over the period plus a daily rhythm: more recent days are busier.
            offset = span * math.sqrt(rng.random())
            at = start + dt.timedelta(seconds=offset)
            model, p_in, p_out, _ = rng.choices(MODELS, weights=model_weights)[0]
            key = rng.choices(keys, weights=KEY_WEIGHTS)[0]
            tokens_in = int(rng.lognormvariate(6.5, 0.9))
            tokens_out = 0 if p_out == 0 else int(rng.lognormvariate(5.2, 0.8))
            cost = _cost_micros(p_in, p_out, tokens_in, tokens_out)
            hit = rng.random() < CACHE_HIT_RATE
            batch.append(
                UsageRecord(
                    request_id=uuid.UUID(int=rng.getrandbits(128)),
                    account=account,
                    api_key=key,
                    endpoint="embeddings" if p_out == 0 else "chat.completions",
                    model=model,
                    run_id=rng.choice(runs) if rng.random() < RUN_SHARE else "",
                    input_tokens=tokens_in,
                    cached_tokens=0,
                    output_tokens=tokens_out,
                    cost_micros=0 if hit else cost,
                    saved_micros=cost if hit else 0,
                    cache_status="HIT" if hit else "MISS",
                    http_status=200,
                    latency_ms=rng.randint(3, 15) if hit else int(rng.lognormvariate(6.3, 0.5)),
                    created_at=min(at, now),
                )
            )
            if len(batch) >= opts["batch"]:
                self._flush(batch)
                batch = []
                if (i + 1) % (opts["batch"] * 20) == 0:
                    self.stdout.write(f"  {i + 1:,} records ({time.monotonic() - t0:.0f}s)")
        self._flush(batch)
        tz = account.tz
        rows = rollup_range(
            account=account,
            first=start.astimezone(tz).date(),
            last=local_today(tz, now),
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Seeded {total:,} records for {opts['email']} ({account.public_id}) in "
                f"{time.monotonic() - t0:.1f}s; {rows:,} daily rows."
            )
        )

    def _flush(self, batch: list[UsageRecord]) -> None:
        if batch:
            with transaction.atomic():
                UsageRecord.objects.bulk_create(batch, batch_size=len(batch))

    def _keys(self, account: Account) -> list[ApiKey]:
        provider = ProviderKey.objects.filter(
            account=account
        ).first() or ProviderKey.objects.create(
            account=account,
            name="demo",
            ciphertext=encrypt("sk-demo-not-a-real-key"),
            hint="sk-…demo",
        )
        keys = []
        for name in KEY_NAMES:
            key = ApiKey.objects.filter(account=account, name=name).first()
            if key is None:
                key = ApiKey.objects.create(
                    account=account,
                    provider_key=provider,
                    name=name,
                    prefix="demo" + uuid.uuid4().hex[:12],
                    # Not a digest of anything: demo keys must never authenticate.
                    digest="!" * 64,
                )
            keys.append(key)
        return keys
