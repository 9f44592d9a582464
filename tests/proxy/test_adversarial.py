"""Adversarial probes of the proxy's promise: a cap is never exceeded, nothing is lost.

Each test tries one way around the reservation (an input bound that under-counts, an
output limit the provider reads differently, a path or body that skips admission, an
upstream failure that loses a bill, concurrency). Each defect these probes
found is fixed, and its test stays as the regression guard.

The fake OpenAI server is honest (it never bills more than a real BPE provider could),
except where a test asks it, with `X-Fake-Prompt-Tokens`, to report what OpenAI documents
it bills for content the fake cannot count (an image).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from django.utils import timezone

from budgets.ledger import get_ledger, reset_ledger
from budgets.models import Cap, ModelPrice
from budgets.services import cap_status, run_counter_key
from keys.services import api_key_set_paused
from proxy.errors import ProxyError
from proxy.validation import parse_chat, parse_embeddings, parse_responses
from tests.conftest import FakeOpenAI
from tests.proxy.conftest import (
    ProxyServer,
    Tenant,
    make_tenant,
    running_proxy,
    server_env,
    start_proxy,
)
from tests.proxy.helpers import eventually, records

MESSAGES = [{"role": "user", "content": "Tell me a fact"}]

# gpt-4o-mini: 0.15 µ$ per input token, 0.60 µ$ per output token.
MINI = "gpt-4o-mini"


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adv_proxy(django_db_setup: None, fake_openai_server: FakeOpenAI) -> Iterator[ProxyServer]:
    """A proxy that forwards the fake's extra control headers and gives up on a silent
    provider after 2 s (so a timeout is testable)."""
    env = server_env(
        fake_openai_server.base_url,
        PROXY_FORWARD_HEADERS="x-fake-status,x-fake-delay-ms,x-fake-no-usage,"
        "x-fake-drop-after,x-fake-stream-delay-only,x-fake-prompt-tokens,x-fake-truncate-body,"
        "x-fake-cache-write-tokens",
        PROXY_UPSTREAM_READ_TIMEOUT_SECONDS="2",
    )
    with running_proxy(env) as server:
        yield server


@pytest.fixture
def proxy(adv_proxy: ProxyServer, fake_openai: FakeOpenAI) -> ProxyServer:
    return adv_proxy


def post(
    proxy: ProxyServer,
    tenant: Tenant,
    path: str,
    body: dict[str, Any] | bytes,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    sent = {"Authorization": f"Bearer {tenant.raw}", "Content-Type": "application/json"}
    sent.update(headers or {})
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(proxy.base_url + path, content=content, headers=sent, timeout=20, **kwargs)


def spent_reserved(tenant: Tenant, scope: str = "account") -> tuple[int, int, int]:
    """(spent, reserved, limit) of the tenant's first cap of `scope`."""
    [status] = [s for s in cap_status(account=tenant.account) if s.scope == scope][:1]
    return status.spent_micros, status.reserved_micros, status.limit_micros


def assert_within_cap(tenant: Tenant, resp: httpx.Response) -> None:
    assert resp.status_code in (200, 402), resp.text
    spent, reserved, limit = spent_reserved(tenant)
    assert reserved == 0
    assert spent <= limit, f"overshoot: spent {spent} µ$ of a {limit} µ$ cap"


def steep_price(tenant: Tenant, model: str, *, input_: int = 1, output: int = 1) -> None:
    """A custom price per token, in micro-dollars per million tokens."""
    ModelPrice.objects.create(
        account=tenant.account,
        model=model,
        input_micros_per_mtok=input_,
        cached_input_micros_per_mtok=input_,
        output_micros_per_mtok=output,
        max_output_tokens=16384,
    )


def steep_output_price(tenant: Tenant, model: str) -> None:
    """Output at 100 µ$ per token, input almost free: the output bound decides the cap."""
    steep_price(tenant, model, output=100_000_000)


def prompt_text_bytes(value: Any) -> int:
    """UTF-8 bytes of every string, object key and number inside a JSON value: what a
    byte-level BPE provider could at most spend one token each on."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int | float):
        return len(json.dumps(value))
    if isinstance(value, list):
        return sum(prompt_text_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(prompt_text_bytes(k) + prompt_text_bytes(v) for k, v in value.items())
    raise TypeError(type(value))


# --- the input bound (proxy/validation.py), no server needed ---------------------------

UNICODE_TEXTS = [
    "plain ascii",
    "é" * 500,
    "日本語のテキスト" * 100,
    "😀🙈🧑‍🚀" * 200,  # 4-byte code points and ZWJ sequences
    "\u0000\u0001\u001f" * 300,  # control characters: escaped in JSON
    "a\\u0000b" * 100,  # a literal backslash-u in the text
    "𠀀𪚥" * 300,  # supplementary-plane CJK
]


@pytest.mark.parametrize("text", UNICODE_TEXTS)
@pytest.mark.parametrize("ascii_escaped", [True, False])
def test_the_input_bound_covers_the_utf8_bytes_of_any_text(text: str, ascii_escaped: bool) -> None:
    body = {"model": MINI, "messages": [{"role": "user", "content": text}]}
    raw = json.dumps(body, ensure_ascii=ascii_escaped).encode()
    parsed = parse_chat(raw)
    assert parsed.input_tokens_bound >= prompt_text_bytes(body["messages"])


def test_responses_input_and_instructions_are_both_in_the_bound() -> None:
    body = {
        "model": MINI,
        "instructions": "ü" * 4000,
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "\u00e9" * 3000}]},
            {"type": "function_call_output", "call_id": "c1", "output": "x" * 2000},
        ],
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
    }
    for ascii_escaped in (True, False):
        parsed = parse_responses(json.dumps(body, ensure_ascii=ascii_escaped).encode())
        wanted = prompt_text_bytes([body["instructions"], body["input"], body["text"]])
        assert parsed.input_tokens_bound >= wanted


@pytest.mark.parametrize(
    "tokens", [[0] * 5000, [100_000] * 3000, [[1, 2, 3]] * 2000, list(range(4000))]
)
def test_embedding_token_arrays_bound_at_least_one_token_per_integer(tokens: list[Any]) -> None:
    raw = json.dumps({"model": "text-embedding-3-small", "input": tokens}).encode()
    count = sum(len(t) if isinstance(t, list) else 1 for t in tokens)
    assert parse_embeddings(raw).input_tokens_bound >= count


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", -1),
        ("max_tokens", 0),
        ("max_tokens", 1.5),
        ("max_tokens", 16.0),
        ("max_tokens", "16"),
        ("max_tokens", True),
        ("max_completion_tokens", 0),
        ("max_completion_tokens", "1e3"),
        ("n", 0),
        ("n", 129),
        ("n", 2.0),
    ],
)
def test_nonsense_output_limits_are_refused_before_anything_is_reserved(
    field: str, value: Any
) -> None:
    raw = json.dumps({"model": MINI, "messages": MESSAGES, field: value}).encode()
    with pytest.raises(ProxyError) as caught:
        parse_chat(raw)
    assert caught.value.status == 400


def test_a_huge_output_limit_is_treated_as_none_so_the_ledger_writes_its_bound() -> None:
    raw = json.dumps({"model": MINI, "messages": MESSAGES, "max_tokens": 10**30}).encode()
    parsed = parse_chat(raw)
    # None = "no limit named": the admission is then always clamped and the ledger's
    # bound is written into the field the client used.
    assert parsed.requested_output_tokens is None
    assert parsed.output_fields == ("max_tokens",)


def test_max_output_tokens_in_a_chat_body_is_not_the_chat_limit() -> None:
    # Not a chat parameter: the provider rejects it, so it must not lower the reservation.
    raw = json.dumps({"model": MINI, "messages": MESSAGES, "max_output_tokens": 1}).encode()
    assert parse_chat(raw).requested_output_tokens is None


def _schema_tool(properties: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": "pick",
                "parameters": {"type": "object", "properties": properties},
            },
        }
    ]


def test_numbers_in_tool_schemas_count_every_digit_on_the_walk_path() -> None:
    big = int("9" * 300)
    body = {
        "model": MINI,
        "messages": [{"role": "user", "content": "pick one \u00e9"}],
        "tools": _schema_tool({"x": {"type": "integer", "enum": [big] * 100}}),
    }
    raw = json.dumps(body).encode()  # ensure_ascii: "\u00e9" forces the walk
    assert b"\\u" in raw
    bound = parse_chat(raw).input_tokens_bound
    # A lower bound on real tokens: 100 values of 300 digits, at most 3 digits a token.
    assert bound >= 100 * 300 // 3, bound


def test_floats_count_their_text_as_forwarded_on_both_paths() -> None:
    # The body is written again when the proxy sets the output limit: "-1e15" (5 bytes in
    # the raw body, the fast path's bound) goes out as "-1000000000000000.0" (19 bytes).
    body = {
        "model": MINI,
        "messages": [{"role": "user", "content": "pick one"}],
        "tools": _schema_tool({"x": {"type": "number", "enum": [-1e15] * 2000}}),
    }
    raw = json.dumps(body).encode().replace(b"-1000000000000000.0", b"-1e15")
    assert raw.count(b"-1e15") == 2000
    parsed = parse_chat(raw)
    assert parsed.requested_output_tokens is None  # clamped: the body is written again
    assert parsed.input_tokens_bound >= prompt_text_bytes([body["messages"], body["tools"]])
    # The walk (a \u escape forces it) counts each number as Python writes it, but a body
    # sent on untouched (its limit named and affordable) carries the literal as it came.
    literal = b"1." + b"0" * 100
    walked = (
        b'{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"\\u00e9"}],'
        b'"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object",'
        b'"properties":{"x":{"type":"number","enum":[' + b",".join([literal] * 2000) + b"]}}}}}]}"
    )
    assert parse_chat(walked).input_tokens_bound >= 2000 * len(literal)


def test_object_keys_count_their_utf8_bytes_on_the_walk_path() -> None:
    name = "\U00020000" * 1000  # 4,000 UTF-8 bytes
    body = {
        "model": MINI,
        "messages": [{"role": "user", "content": "fill it \u00e9"}],
        "tools": _schema_tool({name: {"type": "string"}}),
    }
    raw = json.dumps(body).encode()
    parsed = parse_chat(raw)
    assert parsed.input_tokens_bound >= prompt_text_bytes([body["messages"], body["tools"]])


def test_a_screenshot_in_a_responses_input_counts_as_an_image() -> None:
    from django.conf import settings

    body = {
        "model": MINI,
        "input": [
            {
                "type": "computer_call_output",
                "call_id": "call_1",
                "output": {"type": "computer_screenshot", "file_id": "file-abc123"},
            }
        ],
    }
    parsed = parse_responses(json.dumps(body).encode())
    assert parsed.input_tokens_bound >= settings.PROXY_IMAGE_TOKEN_CEILING


def test_an_image_for_a_gpt_4o_mini_fine_tune_counts_at_gpt_4o_mini_s_ceiling() -> None:
    # A fine-tune bills an image as its base model: up to 48,169 tokens, not 6,000.
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    for model in ("ft:gpt-4o-mini-2024-07-18:org::abc123", "FT:gpt-4o-mini:org::x"):
        body = {"model": model, "messages": [{"role": "user", "content": content}]}
        assert parse_chat(json.dumps(body).encode()).input_tokens_bound >= 48_169


def _reasoning(**extra: Any) -> dict[str, Any]:
    return {"type": "reasoning", "id": "rs_1", "summary": [], **extra}


@pytest.mark.parametrize(
    ("item", "param"),
    [
        (_reasoning(), "input[1].encrypted_content"),
        (_reasoning(encrypted_content=None), "input[1].encrypted_content"),
        (_reasoning(encrypted_content=""), "input[1].encrypted_content"),
        ({"type": "compaction", "id": "cmp_1"}, "input[1].encrypted_content"),
        (
            {"type": "additional_tools", "role": "developer", "tools": [{"type": "web_search"}]},
            "input[1].tools[0]",
        ),
        (
            {"type": "tool_search_output", "tools": [{"type": "function", "name": "f"}, {}]},
            "input[1].tools[1]",
        ),
        ({"type": "additional_tools", "role": "developer", "tools": {}}, "input[1].tools"),
    ],
)
def test_responses_items_whose_billed_content_is_not_in_the_body_are_refused(
    item: dict[str, Any], param: str
) -> None:
    body = {"model": "o4-mini", "input": [{"role": "user", "content": "hi"}, item]}
    with pytest.raises(ProxyError) as caught:
        parse_responses(json.dumps(body).encode())
    assert (caught.value.status, caught.value.param) == (400, param)


def test_responses_items_that_carry_their_content_are_bounded_by_it() -> None:
    sealed = "gAAAAAB" + "x" * 3000
    body = {
        "model": "o4-mini",
        "input": [
            {"type": "message", "role": "user", "content": "hi"},
            _reasoning(encrypted_content=sealed),
            {"type": "compaction", "encrypted_content": sealed},
            {
                "type": "additional_tools",
                "role": "developer",
                "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            },
        ],
    }
    parsed = parse_responses(json.dumps(body).encode())
    assert parsed.input_tokens_bound >= 2 * len(sealed)


def test_a_previous_audio_answer_by_id_is_refused_in_chat() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "audio": {"id": "audio_1"}},
        {"role": "user", "content": "again"},
    ]
    with pytest.raises(ProxyError) as caught:
        parse_chat(json.dumps({"model": "gpt-4o-audio-preview", "messages": messages}).encode())
    assert (caught.value.status, caught.value.param) == (400, "messages[1].audio")
    # An explicit null is no audio.
    messages[1] = {"role": "assistant", "content": "hello", "audio": None}
    parse_chat(json.dumps({"model": "gpt-4o-audio-preview", "messages": messages}).encode())


def test_duplicate_keys_are_refused_rather_than_forwarded_ambiguously() -> None:
    raw = (
        b'{"model":"gpt-4o-mini","max_tokens":100000,'
        b'"messages":[{"role":"user","content":"hi"}],"max_tokens":16}'
    )
    with pytest.raises(ProxyError):
        parse_chat(raw)


def test_with_both_output_limits_set_the_larger_is_reserved() -> None:
    raw = json.dumps(
        {"model": MINI, "messages": MESSAGES, "max_tokens": 1, "max_completion_tokens": 20}
    ).encode()
    assert parse_chat(raw).requested_output_tokens == 20


# --- end to end: spend past a cap ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_both_output_limits_set_cannot_take_spend_past_the_cap(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    steep_output_price(tenant, MINI)
    tenant.cap("0.001", scope=Cap.Scope.ACCOUNT, period=Cap.Period.DAY)
    body = {"model": MINI, "messages": MESSAGES, "max_tokens": 1, "max_completion_tokens": 20}
    resp = post(proxy, tenant, "/chat/completions", body, {"Cache-Control": "no-store"})
    assert_within_cap(tenant, resp)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize(
    ("encoding", "max_tokens"),
    [
        ("utf-8", {"max_tokens": 20}),
        # No output limit named: the proxy writes one, so the provider gets the body
        # re-encoded as UTF-8 and bills the image the UTF-16 bytes hid from the bound.
        ("utf-16", {}),
    ],
)
def test_an_image_for_gpt_4o_mini_cannot_take_spend_past_the_cap(
    proxy: ProxyServer, tenant: Tenant, encoding: str, max_tokens: dict[str, int]
) -> None:
    tenant.cap("0.002", scope=Cap.Scope.ACCOUNT, period=Cap.Period.DAY)
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}},
    ]
    body = {"model": MINI, "messages": [{"role": "user", "content": content}], **max_tokens}
    resp = post(
        proxy,
        tenant,
        "/chat/completions",
        json.dumps(body).encode(encoding),
        {"Cache-Control": "no-store", "X-Fake-Prompt-Tokens": "25501"},
    )
    assert resp.status_code in (200, 400, 402), resp.text
    spent, reserved, limit = spent_reserved(tenant)
    assert reserved == 0
    assert spent <= limit, f"overshoot: spent {spent} µ$ of a {limit} µ$ cap"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_as_the_json_they_are_not(constant: str) -> None:
    raw = f'{{"model": "{MINI}", "messages": [{{"role": "user", "content": "x"}}], '
    raw += f'"temperature": {constant}}}'
    for parse in (parse_chat, parse_responses):
        with pytest.raises(ProxyError) as caught:
            parse(raw.encode())
        assert (caught.value.status, caught.value.code) == (400, "invalid_json")
        assert f"{constant} is not a JSON number" in caught.value.message


def test_a_number_too_large_for_a_double_is_refused_not_forwarded_as_infinity() -> None:
    raw = f'{{"model": "{MINI}", "messages": [{{"role": "user", "content": "x"}}], '
    raw += '"temperature": 1e400}'
    for parse in (parse_chat, parse_responses):
        with pytest.raises(ProxyError) as caught:
            parse(raw.encode())
        assert (caught.value.status, caught.value.code) == (400, "invalid_json")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"])
def test_a_body_not_in_plain_utf8_is_refused_rather_than_bounded(encoding: str) -> None:
    # The standard library reads UTF-16/32 JSON too, but the media markers are looked for
    # in the raw bytes as UTF-8: in UTF-16 an image went unseen and was bounded by its
    # bytes (a few hundred) instead of the 48,169 tokens gpt-4o-mini may bill for it.
    # A UTF-8 BOM would be forwarded as it came, which the provider need not read as we do.
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    body = {"model": MINI, "messages": [{"role": "user", "content": content}]}
    for parse in (parse_chat, parse_responses, parse_embeddings):
        with pytest.raises(ProxyError) as caught:
            parse(json.dumps(body).encode(encoding))
        assert (caught.value.status, caught.value.code) == (400, "invalid_json")


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_lone_surrogate_escape_is_a_clear_400(proxy: ProxyServer, tenant: Tenant) -> None:
    raw = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a\\ud800b"}]}'
    resp = post(proxy, tenant, "/chat/completions", raw)
    assert resp.status_code == 400, (resp.status_code, resp.text)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_lone_surrogate_outside_the_prompt_is_a_400_that_holds_nothing(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    # `user` is not a prompt-bearing field, and the body is re-encoded to write the
    # output limit: that used to fail after the reservation (HTTP 500, which the SDK
    # retries, each attempt's reservation left for the sweep to charge in full).
    tenant.cap("1")
    raw = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"user":"\\ud800"}'
    resp = post(proxy, tenant, "/chat/completions", raw)
    assert resp.status_code == 400, (resp.status_code, resp.text)
    assert resp.json()["error"]["code"] == "invalid_json"
    assert resp.headers["x-should-retry"] == "false"
    assert fake_openai.stats().get("/v1/chat/completions", 0) == 0
    assert spent_reserved(tenant)[:2] == (0, 0)


def test_a_body_nested_too_deeply_is_a_400_not_an_internal_error() -> None:
    deep = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"x":'
    with pytest.raises(ProxyError) as caught:
        parse_chat(deep + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert (caught.value.status, caught.value.code) == (400, "invalid_json")
    schema = b'{"a":' * 600 + b"1" + b"}" * 600  # walked (a \\u escape), too deep for it
    with pytest.raises(ProxyError) as caught:
        parse_chat(
            b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\\u00e9"}],'
            b'"tools":[{"type":"function","function":{"name":"f","parameters":' + schema + b"}}]}"
        )
    assert (caught.value.status, caught.value.code) == (400, "invalid_json")


# --- end to end: requests that could skip the reservation --------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/completions"),
        ("POST", "/images/generations"),
        ("POST", "/audio/speech"),
        ("POST", "/chat/completions/extra"),
        ("POST", "/Chat/Completions"),
        ("POST", "/batches"),
        ("POST", "/models/gpt-4o-mini"),
        ("GET", "/chat/completions"),
        ("HEAD", "/chat/completions"),
        ("PUT", "/responses"),
        ("PATCH", "/embeddings"),
        ("DELETE", "/responses"),
    ],
)
def test_no_other_path_or_method_reaches_the_provider(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI, method: str, path: str
) -> None:
    body = json.dumps({"model": MINI, "messages": MESSAGES, "prompt": "hi"}).encode()
    resp = httpx.request(
        method,
        proxy.base_url + path,
        content=body,
        headers={"Authorization": f"Bearer {tenant.raw}", "Content-Type": "application/json"},
        timeout=20,
    )
    assert resp.status_code in (404, 405), resp.text
    assert sum(fake_openai.stats().values()) == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_models_path_cannot_reach_other_provider_endpoints(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    resp = httpx.get(
        proxy.base_url + "/models/..%2F..%2F_fake%2Fstats",
        headers={"Authorization": f"Bearer {tenant.raw}"},
        timeout=20,
    )
    # The fake's own stats page answers {"<path>": count}: reaching it proves the escape.
    assert resp.status_code in (400, 404), resp.text


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_gzip_body_the_proxy_cannot_read_is_refused_not_forwarded(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    tenant.cap("1", scope=Cap.Scope.ACCOUNT, period=Cap.Period.DAY)
    raw = gzip.compress(json.dumps({"model": MINI, "messages": MESSAGES}).encode())
    resp = post(proxy, tenant, "/chat/completions", raw, {"Content-Encoding": "gzip"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_json"
    # Named as the cause, not reported as a byte the JSON could not decode.
    assert "Content-Encoding 'gzip' is not supported" in resp.json()["error"]["message"]
    assert sum(fake_openai.stats().values()) == 0
    assert spent_reserved(tenant)[:2] == (0, 0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_chunked_body_is_reserved_and_charged_like_any_other(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    tenant.cap("1", scope=Cap.Scope.ACCOUNT, period=Cap.Period.DAY)
    raw = json.dumps({"model": MINI, "messages": [{"role": "user", "content": "x" * 5000}]})

    def pieces() -> Iterator[bytes]:
        data = raw.encode()
        for i in range(0, len(data), 700):
            yield data[i : i + 700]

    resp = httpx.post(
        proxy.base_url + "/chat/completions",
        content=pieces(),
        headers={"Authorization": f"Bearer {tenant.raw}", "Cache-Control": "no-store"},
        timeout=20,
    )
    assert resp.status_code == 200, resp.text
    [record] = records(tenant.account)
    assert record.cost_micros > 0
    assert spent_reserved(tenant)[:2] == (record.cost_micros, 0)


# --- the cache and the kill-switch -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_cached_answer_is_not_served_to_a_paused_key_or_account(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    body = {"model": MINI, "messages": MESSAGES}
    first = post(proxy, tenant, "/chat/completions", body)
    assert first.status_code == 200
    assert post(proxy, tenant, "/chat/completions", body).headers["x-budgetllm-cache"] == "HIT"

    api_key_set_paused(api_key=tenant.api_key, actor=tenant.person.user, paused=True)
    paused = post(proxy, tenant, "/chat/completions", body)
    assert paused.status_code == 403 and paused.json()["error"]["type"] == "key_paused"

    api_key_set_paused(api_key=tenant.api_key, actor=tenant.person.user, paused=False)
    tenant.account.paused_at = timezone.now()
    tenant.account.save(update_fields=["paused_at"])
    stopped = post(proxy, tenant, "/chat/completions", {**body, "stream": True})
    assert stopped.status_code == 403 and stopped.json()["error"]["type"] == "account_paused"
    assert fake_openai.stats()["/v1/chat/completions"] == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_second_account_with_the_same_key_name_and_body_gets_its_own_answer(
    proxy: ProxyServer, tenant: Tenant, outsider: Any, fake_openai: FakeOpenAI
) -> None:
    other = make_tenant(outsider, name=tenant.api_key.name)
    other.cap("0", scope=Cap.Scope.ACCOUNT, period=Cap.Period.DAY)
    body = {"model": MINI, "messages": MESSAGES, "user": "same", "seed": 7}
    assert post(proxy, tenant, "/chat/completions", body).status_code == 200
    # The other account's cap is $0: a shared cache entry would answer it for free.
    resp = post(proxy, other, "/chat/completions", body)
    assert resp.status_code == 402
    assert resp.headers["x-budgetllm-cache"] != "HIT"


# --- the run budget header -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize(
    "value", ["-1", "NaN", "sNaN", "Infinity", "-Infinity", "0x10", "1,5", "$1", "", "1e"]
)
def test_a_malformed_run_budget_is_400(proxy: ProxyServer, tenant: Tenant, value: str) -> None:
    headers = {"X-BudgetLLM-Run-Id": "r1", "X-BudgetLLM-Run-Budget-USD": value}
    resp = post(proxy, tenant, "/chat/completions", {"model": MINI, "messages": MESSAGES}, headers)
    assert resp.status_code == 400, (value, resp.text)
    assert resp.json()["error"]["code"] == "invalid_run_budget"


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize("value", ["0", "-0", "0.0000001", "0e5"])
def test_a_zero_run_budget_refuses_with_402(proxy: ProxyServer, tenant: Tenant, value: str) -> None:
    headers = {"X-BudgetLLM-Run-Id": "r1", "X-BudgetLLM-Run-Budget-USD": value}
    resp = post(proxy, tenant, "/chat/completions", {"model": MINI, "messages": MESSAGES}, headers)
    assert resp.status_code == 402, (value, resp.text)
    assert resp.json()["error"]["code"] == "run_run_cap"


# --- upstream failures: released, or charged when the provider billed -------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_5xx_releases_the_reservation(
    proxy: ProxyServer, tenant: Tenant, stream: bool
) -> None:
    tenant.cap("1", scope=Cap.Scope.ACCOUNT, period=Cap.Period.DAY)
    body = {"model": MINI, "messages": MESSAGES, "stream": stream}
    resp = post(proxy, tenant, "/chat/completions", body, {"X-Fake-Status": "503"})
    assert resp.status_code == 503
    assert spent_reserved(tenant)[:2] == (0, 0)
    [record] = records(tenant.account)
    assert (record.http_status, record.cost_micros) == (503, 0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize(
    ("failure", "status"),
    [
        pytest.param(
            {"X-Fake-Truncate-Body": "40"},
            502,
            id="body-cut-after-200",
        ),
        pytest.param(
            {"X-Fake-Delay-Ms": "3000"},
            504,
            id="read-timeout",
        ),
    ],
)
def test_an_answer_the_provider_generated_but_we_never_read_is_charged(
    proxy: ProxyServer, tenant: Tenant, failure: dict[str, str], status: int
) -> None:
    tenant.cap("1", scope=Cap.Scope.ACCOUNT, period=Cap.Period.DAY)
    body = {"model": MINI, "messages": MESSAGES, "max_tokens": 20}
    resp = post(proxy, tenant, "/chat/completions", body, {"Cache-Control": "no-store", **failure})
    assert resp.status_code == status
    spent, reserved, _ = spent_reserved(tenant)
    assert reserved == 0
    assert spent > 0, "the provider generated (and billed) this answer; the ledger says $0"


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_responses_stream_hung_up_mid_way_is_charged_and_not_left_reserved(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    tenant.cap("1", scope=Cap.Scope.ACCOUNT, period=Cap.Period.DAY)
    hang_up_after_three_deltas(proxy, tenant, MINI, "Write a long story")
    [record] = eventually(lambda: records(tenant.account))
    assert record.http_status == 499
    assert record.cost_micros > 0 and record.output_tokens >= 3
    assert spent_reserved(tenant)[:2] == (record.cost_micros, 0)


def hang_up_after_three_deltas(proxy: ProxyServer, tenant: Tenant, model: str, text: str) -> int:
    """Stream a Responses answer (events 100 ms apart), hang up after three text deltas;
    returns the output limit the proxy wrote (X-BudgetLLM-Max-Tokens)."""
    body = {"model": model, "input": text, "stream": True}
    headers = {
        "Authorization": f"Bearer {tenant.raw}",
        "X-Fake-Delay-Ms": "100",
        "X-Fake-Stream-Delay-Only": "1",
        "Cache-Control": "no-store",
    }
    deltas = 0
    with httpx.stream(
        "POST", proxy.base_url + "/responses", json=body, headers=headers, timeout=20
    ) as resp:
        assert resp.status_code == 200
        allowed = int(resp.headers["x-budgetllm-max-tokens"])
        for line in resp.iter_lines():
            if "output_text.delta" in line and line.startswith("data:"):
                deltas += 1
            if deltas == 3:
                break
    return allowed


@pytest.mark.parametrize(
    ("model", "reasons"),
    [
        ("o4-mini", True),
        ("gpt-5-mini", True),
        ("gpt-5.4", True),
        ("gpt-6-sol", True),
        ("gpt-6.1-terra", True),
        ("ft:gpt-6-luna:org::abc", True),
        ("o5-mini", True),
        ("codex-mini-latest", True),
        ("gpt-4o", False),
        ("gpt-4.1-mini", False),
        ("gpt-5-chat-latest", False),
        ("chatgpt-4o-latest", False),
        ("gpt-chat-latest", False),
        ("omni-moderation-latest", False),
    ],
)
def test_every_reasoning_family_is_known_to_hide_reasoning_from_a_stream(
    model: str, reasons: bool
) -> None:
    from proxy.views import _may_reason

    assert _may_reason(model) is reasons


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_gpt_6_stream_hung_up_mid_way_is_charged_its_hidden_reasoning(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    # gpt-6 models reason in output tokens a stream never shows: a hang-up before the
    # usage arrives may have been billed every token allowed, not the few bytes streamed.
    tenant.cap("1", scope=Cap.Scope.ACCOUNT, period=Cap.Period.DAY)
    allowed = hang_up_after_three_deltas(proxy, tenant, "gpt-6-sol", "Think hard, then answer")
    [record] = eventually(lambda: records(tenant.account))
    assert record.http_status == 499
    assert record.output_tokens == allowed
    spent, reserved, limit = spent_reserved(tenant)
    assert reserved == 0 and spent == record.cost_micros <= limit


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_sdk_streams_with_n_choices_and_tools_are_charged_within_the_reservation(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    tenant.cap("0.0001", scope=Cap.Scope.ACCOUNT, period=Cap.Period.DAY)
    client = proxy.client(tenant.raw, max_retries=0)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for kwargs in (
        {"n": 3, "stream": True},
        {"n": 2, "tools": tools},
        {"n": 4, "stream": True, "stream_options": {"include_usage": True}},
    ):
        try:
            messages: Any = MESSAGES
            client.chat.completions.create(
                model=MINI, messages=messages, extra_headers={"Cache-Control": "no-store"}, **kwargs
            )
        except openai.APIStatusError as exc:
            assert exc.status_code == 402
    spent, reserved, limit = spent_reserved(tenant)
    assert reserved == 0 and 0 < spent <= limit


def steep_input_price(tenant: Tenant, model: str) -> None:
    """Input at 100 µ$ per token, output almost free: the input bound decides the cap."""
    steep_price(tenant, model, input_=100_000_000)


# Requests whose few bytes make the provider bill input they do not carry: a stored item
# it fetches by id, or a hosted tool whose retrieved content it bills as input tokens.
# X-Fake-Prompt-Tokens reports what OpenAI bills for them (5,000 tokens, $0.50 here).
_STORED_CONTENT = [
    pytest.param(
        "/responses",
        {
            "model": "o4-mini",
            "max_output_tokens": 16,
            "input": [
                {"role": "user", "content": "What is the weather in Paris?"},
                # store defaults to true: the provider restores the reasoning stored under
                # this id and bills its tokens as input; only the id is in the body.
                {"type": "reasoning", "id": "rs_stored_elsewhere", "summary": []},
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "weather",
                    "arguments": "{}",
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            ],
        },
        id="responses-reasoning-item-by-id",
    ),
    pytest.param(
        "/chat/completions",
        {
            "model": "gpt-4o-audio-preview",
            "max_tokens": 16,
            "messages": [
                {"role": "user", "content": "Say something long."},
                # A previous audio answer by id: billed as audio input tokens.
                {"role": "assistant", "audio": {"id": "audio_stored_elsewhere"}},
                {"role": "user", "content": "Now summarise it."},
            ],
        },
        id="chat-assistant-audio-by-id",
    ),
    pytest.param(
        "/responses",
        {
            "model": "o4-mini",
            "max_output_tokens": 16,
            "input": [
                # Hosted tools handed over in an input item rather than in `tools`.
                {
                    "type": "additional_tools",
                    "role": "developer",
                    "tools": [{"type": "web_search"}],
                },
                {"role": "user", "content": "Search the news of today."},
            ],
        },
        id="responses-hosted-tool-in-additional-tools-item",
    ),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize(("path", "body"), _STORED_CONTENT)
def test_input_the_provider_fetches_or_retrieves_cannot_take_spend_past_the_cap(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI, path: str, body: dict[str, Any]
) -> None:
    steep_input_price(tenant, body["model"])
    tenant.cap("0.10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.DAY)
    resp = post(
        proxy, tenant, path, body, {"Cache-Control": "no-store", "X-Fake-Prompt-Tokens": "5000"}
    )
    assert resp.status_code in (200, 400, 402), resp.text
    spent, reserved, limit = spent_reserved(tenant)
    assert reserved == 0
    assert spent <= limit, f"overshoot: spent {spent} µ$ of a {limit} µ$ cap"
    assert resp.status_code == 400 and resp.json()["error"]["param"] is not None
    assert fake_openai.stats().get("/v1" + path, 0) == 0


# gpt-6-sol: input 2 µ$ a token, written to the prompt cache 2.5 µ$, output 10 µ$.
CACHE_WRITE_MODEL = "gpt-6-sol"
CACHE_WRITE_PROMPT = "word " * 8000  # 40,000 bytes


def _written_to_the_cache(proxy: ProxyServer, tenant: Tenant, tokens: int) -> httpx.Response:
    """A Responses request the fake bills as `tokens` input tokens, all written to the
    prompt cache, and 16 output tokens."""
    body = {"model": CACHE_WRITE_MODEL, "input": CACHE_WRITE_PROMPT, "max_output_tokens": 16}
    headers = {
        "Cache-Control": "no-store",
        "X-Fake-Prompt-Tokens": str(tokens),
        "X-Fake-Cache-Write-Tokens": str(tokens),
    }
    return post(proxy, tenant, "/responses", body, headers)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_input_written_to_the_prompt_cache_is_charged_at_the_cache_write_price(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    tenant.cap("10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.DAY)
    resp = _written_to_the_cache(proxy, tenant, 10_000)
    assert resp.status_code == 200, resp.text
    [record] = eventually(lambda: records(tenant.account))
    # What OpenAI bills: 10,000 tokens written at 2.5 µ$ and 16 output tokens at 10 µ$.
    assert record.cost_micros >= 10_000 * 25 // 10 + 16 * 10
    assert resp.headers["x-budgetllm-cost-usd"] == f"{record.cost_micros / 1e6:.6f}"


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_input_written_to_the_prompt_cache_cannot_take_spend_past_the_cap(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    # The reservation at the plain input price (~80,500 µ$) fits a $0.09 cap; what OpenAI
    # bills when every token is written to the cache (100,160 µ$) does not.
    tenant.cap("0.09", scope=Cap.Scope.ACCOUNT, period=Cap.Period.DAY)
    resp = _written_to_the_cache(proxy, tenant, 40_000)
    assert resp.status_code in (200, 402), resp.text
    billed = 40_000 * 25 // 10 + 16 * 10 if resp.status_code == 200 else 0
    spent, reserved, limit = spent_reserved(tenant)
    assert reserved == 0
    assert spent >= billed, f"the ledger holds {spent} µ$ for a request billed {billed} µ$"
    assert spent <= limit, f"overshoot: spent {spent} µ$ of a {limit} µ$ cap"


# --- concurrency: tiny caps, two workers, mixed keys, models and runs -----------------------


def _second_key(tenant: Tenant) -> Tenant:
    """A second bllm_ key in the same account (past the Free plan's one-key limit, which
    is not what this test is about)."""
    from keys.models import ApiKey
    from keys.services import _api_key_generate, api_key_digest

    prefix, raw = _api_key_generate()
    api_key = ApiKey.objects.create(
        account=tenant.account,
        name="second",
        prefix=prefix,
        digest=api_key_digest(raw),
        provider_key=tenant.provider_key,
    )
    return Tenant(tenant.person, tenant.account, tenant.provider_key, api_key, raw)


async def _mixed_load(base_url: str, keys: list[str], total: int, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    sem = asyncio.Semaphore(24)
    limits = httpx.Limits(max_connections=24, max_keepalive_connections=24)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one(i: int) -> None:
            endpoint = rng.choice(["chat", "chat", "chat", "responses", "embeddings"])
            model = rng.choice([MINI, "gpt-4.1-nano"])
            headers = {
                "Authorization": f"Bearer {rng.choice(keys)}",
                "Cache-Control": "no-cache",
                "X-Fake-Delay-Ms": str(rng.choice([0, 3, 10])),
            }
            if rng.random() < 0.6:
                headers["X-BudgetLLM-Run-Id"] = rng.choice(["run-a", "run-b", "run-c"])
                if rng.random() < 0.3:
                    headers["X-BudgetLLM-Run-Budget-USD"] = "0.00002"
            text = "é" * rng.randrange(1, 200) + " 🙂" * rng.randrange(0, 20)
            stream = rng.random() < 0.5
            body: dict[str, Any]
            if endpoint == "chat":
                path = "/chat/completions"
                body = {"model": model, "messages": [{"role": "user", "content": text}]}
                body["stream"] = stream
                limit = rng.choice([None, 1, 16, 20, 5000])
                if limit is not None:
                    body[rng.choice(["max_tokens", "max_completion_tokens"])] = limit
                if rng.random() < 0.2:
                    body["n"] = 2
            elif endpoint == "responses":
                path = "/responses"
                body = {
                    "model": model,
                    "input": text,
                    "instructions": "Be brief.",
                    "stream": stream,
                }
                if rng.random() < 0.5:
                    body["max_output_tokens"] = rng.choice([16, 20, 4000])
            else:
                path = "/embeddings"
                body = {"model": "text-embedding-3-small", "input": [text, text[:10]]}
            async with sem:
                async with client.stream(
                    "POST", base_url + path, json=body, headers=headers
                ) as resp:
                    async for _ in resp.aiter_bytes():
                        pass
                    outcomes[str(resp.status_code)] += 1

        await asyncio.gather(*(one(i) for i in range(total)))
    return outcomes


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["redis", "sql"])
def test_tiny_caps_hold_under_mixed_concurrent_load_on_two_workers(
    backend: str,
    tenant: Tenant,
    fake_openai: FakeOpenAI,
    settings: Any,
) -> None:
    if backend == "redis" and not settings.REDIS_URL:
        pytest.skip("the Redis ledger needs REDIS_URL")
    settings.LEDGER_BACKEND = backend
    reset_ledger()
    second = _second_key(tenant)
    # $0.0001 on the account per day: a handful of requests fit; tighter caps inside it.
    tenant.cap("0.0001", scope=Cap.Scope.ACCOUNT, period=Cap.Period.DAY)
    tenant.cap("0.00006", scope=Cap.Scope.KEY, period=Cap.Period.DAY)
    Cap.objects.create(
        account=tenant.account,
        scope=Cap.Scope.MODEL,
        period=Cap.Period.DAY,
        model="gpt-4.1-nano",
        limit_micros=30,
    )
    tenant.cap("0.00003", scope=Cap.Scope.RUN, period=Cap.Period.RUN)
    Cap.objects.create(
        account=tenant.account,
        scope=Cap.Scope.RUN,
        period=Cap.Period.RUN,
        api_key=second.api_key,
        limit_micros=25,
    )
    server = start_proxy(server_env(fake_openai.base_url, LEDGER_BACKEND=backend), workers=2)
    try:
        outcomes = asyncio.run(
            _mixed_load(server.base_url, [tenant.raw, second.raw], total=150, seed=3)
        )
    finally:
        server.stop()

    assert set(outcomes) <= {"200", "402"}, outcomes
    assert outcomes["200"] > 0 and outcomes["402"] > 0, outcomes
    for status in cap_status(account=tenant.account):
        assert status.reserved_micros == 0, status
        assert status.spent_micros <= status.limit_micros, f"overshoot on {status}"
    ledger = get_ledger()
    for key in (tenant.api_key, second.api_key):
        run_limit = 30 if key == tenant.api_key else 25
        states = ledger.read_counters(
            [run_counter_key(api_key_id=key.id, run_id=r) for r in ("run-a", "run-b", "run-c")]
        )
        for name, state in states.items():
            assert state.reserved_micros == 0, name
            assert state.spent_micros <= run_limit, f"overshoot on {name}: {state}"
    recorded = eventually(lambda: records(tenant.account))
    [account_cap] = [s for s in cap_status(account=tenant.account) if s.scope == "account"]
    assert sum(r.cost_micros for r in recorded) == account_cap.spent_micros
    assert len(recorded) == outcomes["200"]
    reset_ledger()
