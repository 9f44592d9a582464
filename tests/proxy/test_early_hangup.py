"""A client that hangs up before the provider answers."""

from __future__ import annotations

import time

import httpx
import pytest

from budgets.models import Cap
from tests.proxy.conftest import ProxyServer, Tenant
from tests.proxy.helpers import eventually, ledger_totals, records

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.mark.parametrize("stream", [False, True])
def test_hangup_before_the_answer_is_recorded_once_and_settled(
    proxy: ProxyServer, tenant: Tenant, stream: bool
) -> None:
    tenant.cap("10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        "max_tokens": 100,
    }
    headers = {
        "Authorization": f"Bearer {tenant.raw}",
        "X-Fake-Delay-Ms": "800",
        "X-BudgetLLM-Cache": "off",
    }
    with pytest.raises(httpx.TimeoutException):
        httpx.post(proxy.base_url + "/chat/completions", json=body, headers=headers, timeout=0.3)
    time.sleep(1.5)
    [row] = eventually(lambda: records(tenant.account))
    spent, reserved = eventually(lambda: (t := ledger_totals(tenant.account))[1] == 0 and t)
    assert reserved == 0
    assert spent == row.cost_micros > 0
    assert row.http_status == (499 if stream else 200), row.http_status
