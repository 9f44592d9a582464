"""A stream that outlives LEDGER_RESERVATION_TTL_SECONDS, with its worker alive."""

from __future__ import annotations

import threading
import time

import pytest

from budgets.services import reservations_sweep
from tests.conftest import FakeOpenAI
from tests.proxy.conftest import Tenant, server_env, start_proxy
from tests.proxy.helpers import records

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_live_stream_past_the_reservation_ttl_is_charged_what_it_used(
    fake_openai_server: FakeOpenAI, tenant: Tenant
) -> None:
    tenant.cap("5.00")
    server = start_proxy(
        server_env(fake_openai_server.base_url, LEDGER_RESERVATION_TTL_SECONDS="1")
    )
    try:
        client = server.client(tenant.raw, max_retries=0)
        # The sweep runs every LEDGER_SWEEP_INTERVAL_SECONDS; here once, mid-stream.
        sweeper = threading.Timer(2.5, reservations_sweep)
        sweeper.start()
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4000,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={
                "X-BudgetLLM-Cache": "off",
                "X-Fake-Delay-Ms": "250",
                "X-Fake-Stream-Delay-Only": "1",
            },
        )
        usage = [c.usage for c in stream if c.usage][-1]
        sweeper.join()
    finally:
        server.stop()
    time.sleep(0.2)
    (row,) = records(tenant.account)
    # 4000 output tokens were reserved; the fake answered with a handful.
    assert row.output_tokens == usage.completion_tokens, (row.output_tokens, row.cost_micros)
    assert row.http_status == 200
