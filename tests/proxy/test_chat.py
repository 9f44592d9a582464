"""Chat completions through the proxy, with the official OpenAI SDK as the client."""

from __future__ import annotations

import json

import openai
import pytest

from budgets.models import MICROS_PER_USD, Cap
from tests.conftest import FakeOpenAI
from tests.proxy.conftest import ProxyServer, Tenant
from tests.proxy.helpers import records

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "Say hello"}]


def micros(header: str) -> int:
    whole, _, frac = header.partition(".")
    return int(whole) * MICROS_PER_USD + int(frac.ljust(6, "0"))


def test_plain_chat_answers_and_reports_cost_headers(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    client = proxy.client(tenant.raw)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("word0")
    assert completion.usage.completion_tokens == 20
    assert raw.headers["x-budgetllm-cache"] == "MISS"
    assert micros(raw.headers["x-budgetllm-cost-usd"]) > 0
    assert raw.headers["x-budgetllm-saved-usd"] == "0.000000"
    # The free plan's monthly ceiling is the tightest cap that applied.
    assert micros(raw.headers["x-budgetllm-remaining-usd"]) > 0
    # No limit asked: the model's own ceiling is written (what was reserved for).
    assert int(raw.headers["x-budgetllm-max-tokens"]) > 1000
    assert fake_openai.stats()["/v1/chat/completions"] == 1
    [record] = records(tenant.account)
    assert str(record.request_id) == raw.headers["x-request-id"]
    assert record.cost_micros == micros(raw.headers["x-budgetllm-cost-usd"])
    assert (record.input_tokens, record.output_tokens) == (completion.usage.prompt_tokens, 20)
    assert record.cache_status == "MISS"
    assert record.http_status == 200


def test_streaming_chat_relays_chunks_and_strips_the_usage_chunk_it_added(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    client = proxy.client(tenant.raw)
    chunks = list(
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == " ".join(f"word{i}" for i in range(20))
    # The client did not ask for usage: every chunk has a choice (none is the usage chunk).
    assert all(c.choices for c in chunks)
    [record] = records(tenant.account)
    # Settled from the usage chunk the proxy asked for.
    assert record.output_tokens == 20
    assert record.cost_micros > 0


def test_streaming_chat_with_include_usage_keeps_the_usage_chunk(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    client = proxy.client(tenant.raw)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    headers = raw.headers
    chunks = list(raw.parse())
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 20
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-budgetllm-cache"] == "MISS"
    [record] = records(tenant.account)
    assert record.output_tokens == 20


def test_tools_answer_with_a_tool_call(proxy: ProxyServer, tenant: Tenant) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "count_words",
                "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
            },
        }
    ]
    completion = proxy.client(tenant.raw).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, tools=tools
    )
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "count_words"
    assert json.loads(call.function.arguments) == {"words": 20}


def test_json_mode_answers_json(proxy: ProxyServer, tenant: Tenant) -> None:
    completion = proxy.client(tenant.raw).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert "answer" in json.loads(completion.choices[0].message.content)


def test_n_choices_are_all_returned_and_charged(proxy: ProxyServer, tenant: Tenant) -> None:
    completion = proxy.client(tenant.raw).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, n=3
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    [record] = records(tenant.account)
    assert record.output_tokens == 60


def test_streaming_n_choices(proxy: ProxyServer, tenant: Tenant) -> None:
    chunks = list(
        proxy.client(tenant.raw).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, n=2, stream=True
        )
    )
    assert {c.choices[0].index for c in chunks} == {0, 1}


def test_output_is_clamped_to_what_the_cap_affords(proxy: ProxyServer, tenant: Tenant) -> None:
    # gpt-4o: $2.50 / M input, $10 / M output. A $0.0006 cap leaves room for the prompt
    # and a few dozen output tokens, far fewer than the 1000 asked for.
    tenant.cap("0.0006")
    raw = proxy.client(tenant.raw).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=1000
    )
    allowed = int(raw.headers["x-budgetllm-max-tokens"])
    assert 16 <= allowed < 1000
    completion = raw.parse()
    assert completion.usage.completion_tokens == min(20, allowed)
    assert micros(raw.headers["x-budgetllm-cost-usd"]) <= 600


def test_a_reasoning_model_is_refused_rather_than_lowered_to_an_empty_answer(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    # o4-mini: $4.40 / M output. $0.0004 affords ~80 output tokens: enough for gpt-4o-mini
    # to answer, but a reasoning model spends them thinking and returns no text.
    tenant.cap("0.0004")
    client = proxy.client(tenant.raw, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="o4-mini", messages=MESSAGES)
    assert caught.value.status_code == 402
    assert fake_openai.stats().get("/v1/chat/completions", 0) == 0
    # Asked not to think much, the same model gets the shorter answer the cap affords.
    raw = client.chat.completions.with_raw_response.create(
        model="o4-mini", messages=MESSAGES, reasoning_effort="minimal"
    )
    assert 16 <= int(raw.headers["x-budgetllm-max-tokens"]) < 1024


def test_the_next_request_meets_the_previous_one_settled(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    # gpt-4o with max_tokens=1000 reserves ~$0.0101 and costs ~$0.0003. Under a $0.02 cap
    # a request that still met the previous reservation held would be clamped: the settle
    # must not be left for after the answer (on either ledger).
    tenant.cap("0.02")
    client = proxy.client(tenant.raw, max_retries=0).with_options(
        default_headers={"X-BudgetLLM-Cache": "off"}
    )
    for i in range(10):
        if i % 2:
            with client.chat.completions.with_streaming_response.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=1000, stream=True
            ) as raw:
                headers = raw.headers
                assert "[DONE]" in raw.read().decode()
        else:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=1000
            )
            headers = raw.headers
        assert "x-budgetllm-max-tokens" not in headers, f"request {i} was clamped"
    spent = sum(r.cost_micros for r in records(tenant.account))
    assert 0 < spent < 10 * 400


def test_a_request_without_max_tokens_gets_one_written_when_the_cap_is_tight(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    tenant.cap("0.0004")
    raw = proxy.client(tenant.raw).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES
    )
    allowed = int(raw.headers["x-budgetllm-max-tokens"])
    assert raw.parse().usage.completion_tokens == min(20, allowed)


def test_over_the_cap_the_sdk_raises_402_at_once_without_retrying(
    proxy: ProxyServer, tenant: Tenant, counted_client, fake_openai: FakeOpenAI
) -> None:
    import openai

    tenant.cap("0", scope=Cap.Scope.KEY, period=Cap.Period.MONTH)
    counted = counted_client(tenant.raw)  # the SDK's default: 2 retries
    with pytest.raises(openai.APIStatusError) as caught:
        counted.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    err = caught.value
    assert err.status_code == 402
    assert err.type == "budget_exceeded"
    assert err.code == "key_month_cap"
    assert err.body["scope"] == "key"
    assert err.body["limit_usd"] == "0.000000" or err.body["limit_usd"].startswith("0")
    assert "resets" in err.message
    assert err.response.headers["x-should-retry"] == "false"
    assert len(counted.sent) == 1  # no retry
    assert fake_openai.stats().get("/v1/chat/completions", 0) == 0  # never reached upstream
    assert records(tenant.account) == []


def test_upstream_errors_arrive_in_openai_shape_and_release_the_reservation(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    import openai

    tenant.cap("1")
    client = proxy.client(tenant.raw, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Fake-Status": "500"}
        )
    assert "fake server" in caught.value.message
    [record] = records(tenant.account)
    assert (record.http_status, record.cost_micros) == (500, 0)
    from tests.proxy.helpers import ledger_totals

    assert ledger_totals(tenant.account) == (0, 0)
