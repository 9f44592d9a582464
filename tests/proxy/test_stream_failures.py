"""Streams that end badly are still charged correctly and never left reserved."""

from __future__ import annotations

import httpx
import openai
import pytest

from budgets.models import Cap
from tests.proxy.conftest import ProxyServer, Tenant
from tests.proxy.helpers import eventually, ledger_totals, records

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "Write a long story"}]


def test_client_disconnect_mid_stream_is_charged_and_not_left_reserved(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    tenant.cap("10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    headers = {"Authorization": f"Bearer {tenant.raw}", "X-Fake-Delay-Ms": "100"}
    events = 0
    with httpx.stream(
        "POST", proxy.base_url + "/chat/completions", json=body, headers=headers, timeout=10
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events += 1
            if events == 4:
                break  # hang up after the role chunk and three words
    [record] = eventually(lambda: records(tenant.account))
    assert record.http_status == 499
    assert record.cost_micros > 0  # never $0
    assert 3 <= record.output_tokens < 20  # what was streamed, estimated upward
    assert ledger_totals(tenant.account) == (record.cost_micros, 0)  # nothing left reserved


def test_an_upstream_that_drops_the_stream_is_an_sdk_error_and_charged_for_what_came(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    tenant.cap("10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    client = proxy.client(tenant.raw, max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"X-Fake-Drop-After": "6"},
    )
    with pytest.raises(openai.APIError) as caught:
        for _ in stream:
            pass
    assert "broke off" in caught.value.message
    [record] = records(tenant.account)
    assert record.http_status == 502
    assert record.cost_micros > 0
    assert ledger_totals(tenant.account) == (record.cost_micros, 0)


def test_a_stream_without_usage_is_charged_an_upward_estimate(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    client = proxy.client(tenant.raw)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            extra_headers={"X-Fake-No-Usage": "1"},
        )
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    [record] = records(tenant.account)
    assert record.output_tokens >= 20  # bytes of text >= tokens
    assert record.input_tokens >= len(MESSAGES[0]["content"])
