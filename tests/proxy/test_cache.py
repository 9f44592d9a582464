"""The per-account exact-match cache: hits cost $0, record savings, replay as SSE."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from budgets.models import Cap
from keys.models import ApiKey
from proxy.sse import MAX_KEPT_BYTES
from tests.conftest import FakeOpenAI
from tests.proxy.conftest import ProxyServer, Tenant, make_tenant, running_proxy, server_env
from tests.proxy.helpers import eventually, records

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "Tell me a fact"}]
TEXT = " ".join(f"word{i}" for i in range(20))


def chat(client: openai.OpenAI, **kwargs):  # type: ignore[no-untyped-def]
    kwargs.setdefault("model", "gpt-4o-mini")
    kwargs.setdefault("messages", MESSAGES)
    return client.chat.completions.with_raw_response.create(**kwargs)


def test_a_repeated_request_is_a_free_hit_that_records_what_it_saved(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    client = proxy.client(tenant.raw)
    first = chat(client)
    second = chat(client)
    assert first.headers["x-budgetllm-cache"] == "MISS"
    assert second.headers["x-budgetllm-cache"] == "HIT"
    assert second.headers["x-budgetllm-cost-usd"] == "0.000000"
    assert second.headers["x-budgetllm-saved-usd"] == first.headers["x-budgetllm-cost-usd"]
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert fake_openai.stats()["/v1/chat/completions"] == 1
    miss, hit = records(tenant.account)
    assert (hit.cache_status, hit.cost_micros, hit.saved_micros) == ("HIT", 0, miss.cost_micros)


def test_key_order_user_and_stream_flags_do_not_change_the_key(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    headers = {"Authorization": f"Bearer {tenant.raw}", "Content-Type": "application/json"}
    url = proxy.base_url + "/chat/completions"
    a = {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0.2}
    b = {"temperature": 0.2, "user": "someone", "messages": MESSAGES, "model": "gpt-4o-mini"}
    assert (
        httpx.post(url, content=json.dumps(a), headers=headers).headers["x-budgetllm-cache"]
        == "MISS"
    )
    assert (
        httpx.post(url, content=json.dumps(b), headers=headers).headers["x-budgetllm-cache"]
        == "HIT"
    )
    c = {**a, "temperature": 0.3}
    assert (
        httpx.post(url, content=json.dumps(c), headers=headers).headers["x-budgetllm-cache"]
        == "MISS"
    )


def test_a_streaming_request_hits_the_cache_and_is_replayed_as_sse(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    client = proxy.client(tenant.raw)
    chat(client)
    chunks = list(
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    with_usage = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == 20
    assert fake_openai.stats()["/v1/chat/completions"] == 1
    assert [r.cache_status for r in records(tenant.account)] == ["MISS", "HIT", "HIT"]


def test_a_streamed_answer_is_cached_for_plain_requests_too(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    client = proxy.client(tenant.raw)
    list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    raw = chat(client)
    assert raw.headers["x-budgetllm-cache"] == "HIT"
    completion = raw.parse()
    assert completion.choices[0].message.content == TEXT
    assert completion.usage.completion_tokens == 20
    assert fake_openai.stats()["/v1/chat/completions"] == 1


def test_responses_stream_replayed_from_the_cache(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    client = proxy.client(tenant.raw)
    first = client.responses.create(model="gpt-4o-mini", input="Hi")
    events = list(client.responses.create(model="gpt-4o-mini", input="Hi", stream=True))
    assert events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == first.output_text
    assert fake_openai.stats()["/v1/responses"] == 1


@pytest.mark.parametrize(
    "headers",
    [{"Cache-Control": "no-cache"}, {"Cache-Control": "no-store"}, {"X-BudgetLLM-Cache": "off"}],
)
def test_cache_can_be_bypassed_per_request(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI, headers: dict[str, str]
) -> None:
    client = proxy.client(tenant.raw)
    chat(client)
    raw = chat(client, extra_headers=headers)
    assert raw.headers["x-budgetllm-cache"] == "BYPASS"
    assert fake_openai.stats()["/v1/chat/completions"] == 2


def test_no_cache_answers_fresh_and_stores_that_answer_no_store_stores_nothing(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    client = proxy.client(tenant.raw, max_retries=0)
    first = chat(client).parse().id
    # no-cache: a fresh answer, which replaces the stored one (once written, just after
    # the answer; identical requests until then still get the stored one).
    fresh = chat(client, extra_headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-budgetllm-cache"] == "BYPASS" and fresh.parse().id != first
    hit = eventually(lambda: (r := chat(client)).parse().id == fresh.parse().id and r)
    assert hit.headers["x-budgetllm-cache"] == "HIT"
    # no-store: a fresh answer that is not kept; the stored one stays.
    kept = chat(client, extra_headers={"Cache-Control": "no-store"}).parse().id
    assert kept not in (first, fresh.parse().id)
    assert chat(client).parse().id == fresh.parse().id
    assert fake_openai.stats()["/v1/chat/completions"] == 3
    # A refresh that fails (here a cap refuses it) leaves the stored answer to the others.
    tenant.cap("0", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    with pytest.raises(openai.APIStatusError) as refused:
        chat(client, extra_headers={"Cache-Control": "no-cache"})
    assert refused.value.status_code == 402
    still = chat(client)
    assert still.headers["x-budgetllm-cache"] == "HIT" and still.parse().id == fresh.parse().id


def test_a_hit_carries_what_the_tightest_cap_has_left(proxy: ProxyServer, tenant: Tenant) -> None:
    client = proxy.client(tenant.raw, max_retries=0)
    miss, hit = chat(client), chat(client)
    # With no cap of the account's own, the Free plan's $100 a month is the tightest.
    left = 100_000_000 - sum(r.cost_micros for r in records(tenant.account))
    assert miss.headers["x-budgetllm-remaining-usd"] == f"{left / 1e6:.6f}"
    assert hit.headers["x-budgetllm-cache"] == "HIT"
    assert hit.headers["x-budgetllm-remaining-usd"] == f"{left / 1e6:.6f}"
    tenant.cap("1", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    miss = chat(client, messages=[{"role": "user", "content": "Another fact"}])
    hit = chat(client, messages=[{"role": "user", "content": "Another fact"}])
    assert hit.headers["x-budgetllm-cache"] == "HIT"
    # The first answer was spent before the cap existed, and counts against it too.
    left = 1_000_000 - sum(r.cost_micros for r in records(tenant.account))
    assert hit.headers["x-budgetllm-remaining-usd"] == f"{left / 1e6:.6f}"
    assert hit.headers["x-budgetllm-remaining-usd"] == miss.headers["x-budgetllm-remaining-usd"]
    # The tightest of several: a run's budget header lowers it for this request alone.
    run = {"X-BudgetLLM-Run-Id": "r1", "X-BudgetLLM-Run-Budget-USD": "0.000005"}
    hit = chat(client, messages=[{"role": "user", "content": "Another fact"}], extra_headers=run)
    assert hit.headers["x-budgetllm-remaining-usd"] == "0.000005"


@pytest.fixture(scope="module")
def config_cached_proxy(
    django_db_setup: None, fake_openai_server: FakeOpenAI
) -> Iterator[ProxyServer]:
    # Caps as production keeps them: read once a minute unless their version moves.
    env = server_env(fake_openai_server.base_url, LEDGER_CONFIG_CACHE_SECONDS="60")
    with running_proxy(env) as server:
        yield server


def test_a_hit_reads_a_cap_changed_a_moment_ago(
    config_cached_proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    client = config_cached_proxy.client(tenant.raw, max_retries=0)
    tenant.cap("1", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    chat(client)
    assert chat(client).headers["x-budgetllm-cache"] == "HIT"
    # Lowered: the next hit says what the new limit leaves, not the cached caps' figure.
    Cap.objects.filter(account=tenant.account).update(limit_micros=50)
    from budgets.services import caps_changed

    caps_changed(account_id=tenant.account.id)  # as the Caps page does (a signal)
    hit = chat(client)
    assert hit.headers["x-budgetllm-cache"] == "HIT"
    left = max(0, 50 - sum(r.cost_micros for r in records(tenant.account)))
    assert hit.headers["x-budgetllm-remaining-usd"] == f"{left / 1e6:.6f}"


def test_a_hit_is_served_even_when_the_cap_is_exhausted(proxy: ProxyServer, tenant: Tenant) -> None:
    client = proxy.client(tenant.raw, max_retries=0)
    chat(client)
    tenant.cap("0", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    hit = chat(client)
    assert hit.headers["x-budgetllm-cache"] == "HIT"
    assert hit.headers["x-budgetllm-remaining-usd"] == "0.000000"
    with pytest.raises(openai.APIStatusError) as caught:
        chat(client, messages=[{"role": "user", "content": "Something new"}])
    assert caught.value.status_code == 402


def test_the_cache_is_never_shared_between_accounts(
    proxy: ProxyServer, tenant: Tenant, outsider, fake_openai: FakeOpenAI
) -> None:
    other = make_tenant(outsider, name="other")
    chat(proxy.client(tenant.raw))
    assert chat(proxy.client(other.raw)).headers["x-budgetllm-cache"] == "MISS"
    assert fake_openai.stats()["/v1/chat/completions"] == 2


def test_answers_from_different_openai_organizations_or_projects_are_not_shared(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    # Passed to the provider: an answer of one organization carries its ids and encrypted
    # reasoning, which another cannot use.
    client = proxy.client(tenant.raw)
    assert chat(client).headers["x-budgetllm-cache"] == "MISS"
    org_a = {"OpenAI-Organization": "org-a"}
    assert chat(client, extra_headers=org_a).headers["x-budgetllm-cache"] == "MISS"
    project = {**org_a, "OpenAI-Project": "proj-1"}
    assert chat(client, extra_headers=project).headers["x-budgetllm-cache"] == "MISS"
    assert chat(client, extra_headers=org_a).headers["x-budgetllm-cache"] == "HIT"
    assert chat(client).headers["x-budgetllm-cache"] == "HIT"
    assert fake_openai.stats()["/v1/chat/completions"] == 3


def test_an_answer_cut_short_by_the_budget_is_not_cached(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    tenant.cap("0.0008")  # room for ~55 gpt-4o output tokens, then ~35
    client = proxy.client(tenant.raw)
    first = chat(client, model="gpt-4o", max_tokens=1000)
    assert int(first.headers["x-budgetllm-max-tokens"]) < 1000
    second = chat(client, model="gpt-4o", max_tokens=1000)
    assert second.headers["x-budgetllm-cache"] == "MISS"


def test_a_streamed_answer_without_the_providers_usage_is_not_cached(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    # Without usage the stream is charged an upward estimate: cached, that estimate was
    # recorded as saved on every hit (several times the real cost), and a plain hit
    # answered with "usage": null, which the README says is never cached.
    client = proxy.client(tenant.raw)
    list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            extra_headers={"X-Fake-No-Usage": "1"},
        )
    )
    raw = chat(client)
    assert raw.headers["x-budgetllm-cache"] == "MISS"
    assert raw.parse().usage is not None
    assert fake_openai.stats()["/v1/chat/completions"] == 2


def test_an_entry_older_than_the_keys_ttl_is_not_served(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    # The TTL is the key's: an entry written under a longer TTL (another key of the
    # account, or this key before its TTL was lowered) is no answer for this key once it
    # is older than this key's TTL.
    client = proxy.client(tenant.raw)
    chat(client)  # stored for the default 24 h
    ApiKey.objects.filter(pk=tenant.api_key.pk).update(cache_ttl_seconds=1)
    time.sleep(1.2)
    assert chat(client).headers["x-budgetllm-cache"] == "MISS"
    assert chat(client).headers["x-budgetllm-cache"] == "HIT"  # the fresh answer
    assert fake_openai.stats()["/v1/chat/completions"] == 2


def test_an_answer_larger_than_a_stream_may_keep_is_not_cached(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    # A streamed answer beyond MAX_KEPT_BYTES was never cached, a plain one of any size
    # was: a batch of 2,048 embeddings is tens of MB, each kept for 24 h in the Redis the
    # ledger uses by default, so a bulk ingestion could fill it for every account.
    client = proxy.client(tenant.raw)
    big = {"X-Fake-Word-Bytes": str(MAX_KEPT_BYTES // 20 + 1)}  # 20 words: over the bound
    first = chat(client, extra_headers=big)
    assert len(first.parse().choices[0].message.content) > MAX_KEPT_BYTES
    assert chat(client, extra_headers=big).headers["x-budgetllm-cache"] == "MISS"
    assert fake_openai.stats()["/v1/chat/completions"] == 2


def test_identical_requests_in_flight_go_upstream_once(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    client = proxy.client(tenant.raw, max_retries=0)

    def one(_: int) -> tuple[str, str]:
        raw = chat(client, extra_headers={"X-Fake-Delay-Ms": "400"})
        return raw.headers["x-budgetllm-cache"], raw.parse().choices[0].message.content

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(one, range(6)))
    assert fake_openai.stats()["/v1/chat/completions"] == 1
    assert sorted(status for status, _ in results) == ["HIT"] * 5 + ["MISS"]
    assert {text for _, text in results} == {TEXT}


def test_a_responses_hit_echoes_this_requests_metadata_not_the_originals(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    # metadata, user and store do not change what the model writes, so they are not in
    # the key; but a Response echoes them, and a client that tags a request and reads the
    # tag back must get its own tag from a hit, streamed or not.
    client = proxy.client(tenant.raw)
    first = client.responses.create(
        model="gpt-4o-mini", input="Tag me", metadata={"job": "a"}, user="u1"
    )
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini", input="Tag me", metadata={"job": "b"}, store=False
    )
    second = raw.parse()
    with client.responses.stream(model="gpt-4o-mini", input="Tag me") as stream:
        for _ in stream:
            pass
        third = stream.get_final_response()
    assert raw.headers["x-budgetllm-cache"] == "HIT"
    assert fake_openai.stats()["/v1/responses"] == 1
    assert (first.metadata, first.user, first.store) == ({"job": "a"}, "u1", True)
    assert (second.metadata, second.user, second.store) == ({"job": "b"}, None, False)
    assert (third.metadata, third.user) == ({}, None)
    assert second.output_text == third.output_text == first.output_text


def test_the_sql_store_drops_an_expired_row_whose_leaders_worker_died(tenant: Tenant) -> None:
    import datetime as dt

    from django.utils import timezone

    from proxy.cache import CacheEntry, _sql_put_and_unlock
    from proxy.models import CachedResponse

    long_ago = timezone.now() - dt.timedelta(hours=1)
    # A leader took the lock and its worker died before writing: the lock ran out long ago.
    CachedResponse.objects.create(
        account=tenant.account, digest="d" * 64, expires_at=long_ago, locked_until=long_ago
    )
    _sql_put_and_unlock(tenant.account.id, "e" * 64, CacheEntry(b"{}", 1, 1, 0, 1), 60)
    assert list(CachedResponse.objects.values_list("digest", flat=True)) == ["e" * 64]
