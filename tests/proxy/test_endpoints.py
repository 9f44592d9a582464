"""Responses API, embeddings and the models list through the proxy."""

from __future__ import annotations

import pytest

from tests.conftest import FakeOpenAI
from tests.proxy.conftest import ProxyServer, Tenant
from tests.proxy.helpers import records

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_responses_plain(proxy: ProxyServer, tenant: Tenant) -> None:
    raw = proxy.client(tenant.raw).responses.with_raw_response.create(
        model="gpt-4o-mini", input="Say hello", instructions="Be brief", max_output_tokens=50
    )
    response = raw.parse()
    assert response.output_text.startswith("word0")
    assert response.usage.output_tokens == 20
    assert raw.headers["x-budgetllm-cache"] == "MISS"
    [record] = records(tenant.account)
    assert (record.endpoint, record.output_tokens) == ("responses", 20)
    assert record.cost_micros > 0


def test_responses_streaming_settles_from_the_completed_event(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    events = list(
        proxy.client(tenant.raw).responses.create(model="gpt-4o-mini", input="Hi", stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text.startswith("word0 word1")
    [record] = records(tenant.account)
    assert record.output_tokens == 20


def test_embeddings(proxy: ProxyServer, tenant: Tenant) -> None:
    result = proxy.client(tenant.raw).embeddings.create(
        model="text-embedding-3-small", input=["one", "two"]
    )
    assert len(result.data) == 2
    assert len(result.data[0].embedding) == 8
    [record] = records(tenant.account)
    assert (record.endpoint, record.output_tokens) == ("embeddings", 0)
    assert record.input_tokens == result.usage.prompt_tokens


def test_one_worker_sends_every_kind_of_request_on_one_kept_alive_connection(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    client = proxy.client(tenant.raw)
    for i in range(3):
        messages = [{"role": "user", "content": f"keep-alive {i}"}]
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"streamed {i}"}],
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        client.embeddings.create(model="text-embedding-3-small", input=[f"text {i}"])
        client.models.list()
    assert sum(fake_openai.stats().values()) == 12
    assert fake_openai.connections() == 1


def test_models_list(proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI) -> None:
    models = proxy.client(tenant.raw).models.list()
    assert "gpt-4o-mini" in [m.id for m in models]
    assert fake_openai.stats()["/v1/models"] == 1
