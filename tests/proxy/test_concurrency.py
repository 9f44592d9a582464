"""The proof the product is sold on: concurrent and streaming requests never overshoot.

A $0.05 cap, 200 requests at concurrency 50 against two uvicorn worker processes, half of
them streaming, on each ledger backend. Fails on any overshoot, and checks that what the
ledger settled equals the sum of the recorded usage.
"""

from __future__ import annotations

import asyncio

import pytest

from budgets.ledger import reset_ledger
from budgets.models import Cap, ModelPrice
from tests.conftest import FakeOpenAI
from tests.proxy.conftest import Tenant, server_env, start_proxy
from tests.proxy.helpers import eventually, ledger_totals, records
from tests.proxy.load import fire

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CAP_MICROS = 50_000  # $0.05


@pytest.mark.parametrize("backend", ["redis", "sql"])
def test_concurrent_requests_never_exceed_the_cap(
    backend: str,
    tenant: Tenant,
    fake_openai: FakeOpenAI,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    if backend == "redis" and not settings.REDIS_URL:
        pytest.skip("the Redis ledger needs REDIS_URL (CI runs this on PostgreSQL + Redis)")
    settings.LEDGER_BACKEND = backend
    reset_ledger()
    # A steep custom price makes every answer cost ~$0.002, so the cap binds after ~25.
    ModelPrice.objects.create(
        account=tenant.account,
        model="gpt-4o",
        input_micros_per_mtok=5_000_000,
        cached_input_micros_per_mtok=2_500_000,
        output_micros_per_mtok=100_000_000,
        max_output_tokens=16384,
    )
    tenant.cap("0.05", scope=Cap.Scope.KEY, period=Cap.Period.DAY)
    server = start_proxy(server_env(fake_openai.base_url, LEDGER_BACKEND=backend), workers=2)
    try:
        outcomes = asyncio.run(fire(server.base_url, tenant.raw, requests=200, concurrency=50))
    finally:
        server.stop()

    spent, reserved = ledger_totals(tenant.account)
    assert reserved == 0, "a reservation was left behind"
    assert spent <= CAP_MICROS, f"overshoot: spent {spent} µ$ of a {CAP_MICROS} µ$ cap"
    # The cap really was the limit: many requests were refused after real spend. (Requests
    # that name no max_tokens reserve all that is left, so refusals start before the cap
    # is fully spent: conservative by design.)
    assert outcomes["402"] > 50, outcomes
    assert outcomes["200"] > 0 and outcomes["200-stream"] > 0, outcomes
    assert spent > CAP_MICROS // 10, spent
    assert set(outcomes) <= {"200", "200-stream", "402"}, outcomes
    recorded = eventually(lambda: records(tenant.account))
    assert sum(r.cost_micros for r in recorded) == spent
    assert len(recorded) == outcomes["200"] + outcomes["200-stream"]
    assert fake_openai.stats()["/v1/chat/completions"] == len(recorded)
