"""Overshoot ratio of a hard cap under concurrent, streaming load.

    DATABASE_URL=postgres://… REDIS_URL=redis://… .venv/bin/python bench/overshoot.py

A $0.05 key cap, 200 requests at concurrency 50 (half streaming, prompts of varied length,
output limits small, large and absent) against several uvicorn workers, on each ledger
(Redis when REDIS_URL is set, and SQL). Prints settled spend / cap — the overshoot ratio,
which must be <= 1.0 — and checks the ledger's settled total against the recorded usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import (  # noqa: E402
    django_setup,
    load,
    make_tenant,
    production_env,
    start_fake,
    start_proxy,
    stop,
)
from tests.proxy.load import fire  # noqa: E402

CAP_USD = "0.05"
CAP_MICROS = 50_000
# A steep price for gpt-4o on the bench account: ~$0.002 an answer, so the cap binds.
STEEP_PRICE = {
    "model": "gpt-4o",
    "input_micros_per_mtok": 5_000_000,
    "cached_input_micros_per_mtok": 2_500_000,
    "output_micros_per_mtok": 100_000_000,
    "max_output_tokens": 16384,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--ledger", choices=["redis", "sql"], action="append")
    args = parser.parse_args()

    fake, upstream = start_fake()
    base_env = production_env(upstream=upstream)
    ledgers = args.ledger or (["redis", "sql"] if base_env.get("REDIS_URL") else ["sql"])
    django_setup(base_env)
    from django.conf import settings

    from budgets.ledger import reset_ledger
    from budgets.models import UsageRecord
    from budgets.services import cap_status, usage_drain

    worst = 0.0
    try:
        for ledger in ledgers:
            settings.LEDGER_BACKEND = ledger
            reset_ledger()
            env = {**base_env, "LEDGER_BACKEND": ledger}
            key, account = make_tenant(
                email=f"overshoot-{ledger}-{time.time_ns()}@example.com",
                caps_usd={("key", "day"): CAP_USD},
                custom_price=STEEP_PRICE,
            )
            proxy, base = start_proxy(env, workers=args.workers)
            try:
                started = time.monotonic()
                outcomes = asyncio.run(
                    fire(base, key, requests=args.requests, concurrency=args.concurrency)
                )
                seconds = time.monotonic() - started
            finally:
                stop(proxy)
            [status] = cap_status(account=account)
            usage_drain()
            recorded = sum(
                UsageRecord.objects.filter(account=account).values_list("cost_micros", flat=True)
            )
            ratio = status.spent_micros / CAP_MICROS
            worst = max(worst, ratio)
            print(
                json.dumps(
                    {
                        "ledger": ledger,
                        "workers": args.workers,
                        "requests": args.requests,
                        "concurrency": args.concurrency,
                        "outcomes": dict(outcomes),
                        "cap_usd": CAP_USD,
                        "settled_usd": f"{status.spent_micros / 1e6:.6f}",
                        "left_reserved_usd": f"{status.reserved_micros / 1e6:.6f}",
                        "overshoot_ratio": round(ratio, 4),
                        "overshoot_usd": f"{max(status.spent_micros - CAP_MICROS, 0) / 1e6:.6f}",
                        "recorded_usage_equals_ledger": recorded == status.spent_micros,
                        "seconds": round(seconds, 1),
                        "load": load(),
                    }
                ),
                flush=True,
            )
    finally:
        stop(fake)
    if worst > 1.0:
        sys.exit("OVERSHOOT: a cap was exceeded")


if __name__ == "__main__":
    main()
