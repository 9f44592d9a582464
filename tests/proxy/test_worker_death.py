"""A worker killed (SIGKILL) or stopped (SIGTERM) with a stream in flight."""

from __future__ import annotations

import datetime as dt
import signal

import httpx
import pytest
from django.test import override_settings
from django.utils import timezone

from budgets.ledger import reset_ledger
from budgets.models import Cap, UsageRecord
from budgets.services import reservations_sweep, usage_drain
from tests.conftest import FakeOpenAI
from tests.proxy.conftest import Tenant, server_env, start_proxy
from tests.proxy.helpers import ledger_totals

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _stream(base: str, raw: str, on_events, events_before: int) -> list[str]:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Write a long story"}],
        "stream": True,
        "max_tokens": 200,
    }
    headers = {
        "Authorization": f"Bearer {raw}",
        "X-Fake-Delay-Ms": "150",
        "X-Fake-Stream-Delay-Only": "1",
        "X-BudgetLLM-Cache": "off",
    }
    lines: list[str] = []
    try:
        with httpx.stream(
            "POST", base + "/chat/completions", json=body, headers=headers, timeout=30
        ) as resp:
            for line in resp.iter_lines():
                lines.append(line)
                if sum(1 for x in lines if x.startswith("data: ")) == events_before:
                    on_events()
    except httpx.HTTPError:
        pass
    return lines


@pytest.mark.parametrize("backend", ["sql", "redis"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_worker_stopped_mid_stream_is_recorded_once_and_matches_the_ledger(
    fake_openai_server: FakeOpenAI, tenant: Tenant, backend: str, sig: int
) -> None:
    from django.conf import settings

    if backend == "redis" and not settings.REDIS_URL:
        pytest.skip("needs Redis")
    tenant.cap("10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    server = start_proxy(server_env(fake_openai_server.base_url, LEDGER_BACKEND=backend))
    try:
        lines = _stream(server.base_url, tenant.raw, lambda: server.process.send_signal(sig), 3)
        server.process.wait(timeout=30)
    finally:
        server.stop()
    with override_settings(LEDGER_BACKEND=backend):
        reset_ledger()
        try:
            reservations_sweep(now=timezone.now() + dt.timedelta(hours=1))
            usage_drain()
            rows = list(UsageRecord.objects.filter(account=tenant.account))
            spent, reserved = ledger_totals(tenant.account)
        finally:
            reset_ledger()
    assert len(rows) == 1, [(r.http_status, r.cost_micros) for r in rows]
    assert reserved == 0
    assert spent == rows[0].cost_micros > 0
    if sig == signal.SIGTERM:
        # A graceful stop lets the stream finish and settles it from the usage.
        assert "data: [DONE]" in lines, lines[-3:]
        assert rows[0].http_status == 200
    else:
        assert rows[0].http_status == 0  # never seen: charged in full by the sweep
