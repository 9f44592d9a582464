"""Benchmark `keys.services.api_key_resolve`, the proxy's per-request key lookup.

Runs against the configured database (DATABASE_URL, else the embedded SQLite), creates
throwaway accounts with one provider key and one bllm_ key each, times N resolves of
random keys and prints p50/p99 in microseconds and the queries each resolve makes.
Everything it creates is deleted again at the end.

    .venv/bin/python bench/keys_resolve.py --keys 200 --resolves 5000
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/budgetllm .venv/bin/python bench/keys_resolve.py
"""

from __future__ import annotations

import argparse
import os
import random
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
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from accounts.models import Account  # noqa: E402
from keys import vault  # noqa: E402
from keys.models import ApiKey, ProviderKey  # noqa: E402
from keys.services import _api_key_prefix, api_key_create, api_key_resolve  # noqa: E402


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200, help="bllm_ keys to create (max 5000)")
    parser.add_argument("--resolves", type=int, default=5000, help="timed resolves (max 200000)")
    args = parser.parse_args()
    n_keys = max(1, min(args.keys, 5000))
    n_resolves = max(1, min(args.resolves, 200_000))

    call_command("migrate", verbosity=0)
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    accounts: list[Account] = []
    raws: list[str] = []
    try:
        ciphertext = vault.encrypt("sk-bench-" + "x" * 40)
        for i in range(n_keys):
            # One account per key keeps every key inside the Free plan's limits.
            account = Account.objects.create(name=f"{tag}-{i}")
            accounts.append(account)
            pk = ProviderKey.objects.create(account=account, ciphertext=ciphertext, hint="sk-…xxxx")
            _, raw = api_key_create(account=account, actor=None, provider_key=pk, name="bench")
            raws.append(raw)

        rng = random.Random(42)  # noqa: S311 - choosing keys, not secrets
        # Warm up (connection, query compilation, caches).
        for raw in raws[:50]:
            assert api_key_resolve(raw=raw) is not None

        with CaptureQueriesContext(connection) as queries:
            for _ in range(200):
                api_key_resolve(raw=rng.choice(raws))
        per_resolve = len(queries.captured_queries) / 200

        timings: list[float] = []
        for _ in range(n_resolves):
            raw = rng.choice(raws)
            start = time.perf_counter_ns()
            resolved = api_key_resolve(raw=raw)
            timings.append((time.perf_counter_ns() - start) / 1000)
            assert resolved is not None
        timings.sort()

        # For comparison: the same lookup built by the ORM on every call (what
        # api_key_resolve did before it cached the compiled SQL).
        orm_timings: list[float] = []
        for _ in range(min(n_resolves, 2000)):
            prefix = _api_key_prefix(rng.choice(raws))
            start = time.perf_counter_ns()
            ApiKey.objects.select_related("account", "provider_key").filter(prefix=prefix).first()
            orm_timings.append((time.perf_counter_ns() - start) / 1000)
        orm_timings.sort()

        sample_prefix = _api_key_prefix(raws[0])
        plan = (
            ApiKey.objects.select_related("account", "provider_key")
            .filter(prefix=sample_prefix)
            .explain()
        )
        vendor = connection.vendor
        print(f"api_key_resolve on {vendor}: {n_keys} keys, {n_resolves} resolves")
        print(
            f"  p50 {percentile(timings, 0.50):.0f} µs   p99 {percentile(timings, 0.99):.0f} µs"
            f"   mean {statistics.fmean(timings):.0f} µs   max {timings[-1]:.0f} µs"
        )
        print(f"  queries per resolve: {per_resolve:g}")
        print(
            f"  ORM-built query per call (comparison): p50 {percentile(orm_timings, 0.50):.0f} µs"
            f"   p99 {percentile(orm_timings, 0.99):.0f} µs"
        )
        print("  plan:", " | ".join(line.strip() for line in plan.splitlines()))
    finally:
        # CASCADE removes the provider keys and bllm_ keys with their accounts.
        Account.objects.filter(name__startswith=f"{tag}-").delete()


if __name__ == "__main__":
    main()
