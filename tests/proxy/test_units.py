"""The proxy's pure parts: input bounds, cache keys, SSE assembly and replay."""

from __future__ import annotations

import json

import pytest

from proxy.cache import OFF, REFRESH, USE, CacheEntry, cache_digest, cache_mode
from proxy.errors import ProxyError
from proxy.sse import (
    ChatStream,
    ResponsesStream,
    SseSplitter,
    chat_assemble,
    chat_replay,
    responses_replay,
)
from proxy.validation import parse_chat, parse_embeddings, parse_responses
from tests.proxy.helpers import completed_response


def chat_body(**extra: object) -> bytes:
    return json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra}
    ).encode()


def test_input_bound_is_at_least_the_utf8_bytes_of_the_prompt() -> None:
    text = "नमस्ते दुनिया " * 50  # multi-byte text: tokens <= UTF-8 bytes
    raw = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": text}]}, ensure_ascii=False
    ).encode()
    assert parse_chat(raw).input_tokens_bound >= len(text.encode())
    escaped = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
    assert parse_chat(escaped).input_tokens_bound >= len(text.encode())


def test_images_count_at_the_ceiling_not_their_bytes(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PROXY_IMAGE_TOKEN_CEILING = 6000
    part = {"type": "image_url", "image_url": {"url": "https://x.example/cat.png"}}
    raw = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": [part, part]}]}
    ).encode()
    bound = parse_chat(raw).input_tokens_bound
    assert 12000 <= bound < 12500


def test_an_escaped_media_key_cannot_dodge_the_image_ceiling(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PROXY_IMAGE_TOKEN_CEILING = 6000
    raw = (
        b'{"model":"m","messages":[{"role":"user","content":[{"type":"image\\u005furl",'
        b'"image\\u005furl":{"url":"https://x.example/a.png"}}]}]}'
    )
    assert parse_chat(raw).input_tokens_bound >= 6000


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "input": "x", "previous_response_id": "resp_1"},
        {"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]},
        # The SDK's ItemReference has an optional type: an id alone references the item.
        {"model": "m", "input": [{"role": "user", "content": "hi"}, {"id": "msg_1"}]},
        {"model": "m", "input": [{"id": "msg_1", "type": None}]},
        {"model": "m", "input": "x", "tools": [{"type": "web_search"}]},
        {"model": "m", "input": "x", "background": True},
    ],
)
def test_responses_whose_cost_cannot_be_bounded_are_refused(body: dict) -> None:
    with pytest.raises(ProxyError) as caught:
        parse_responses(json.dumps(body).encode())
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "model", ["gpt-4o-mini-search-preview", "gpt-4o-search-preview-2025-03-11", "gpt-5-search-api"]
)
def test_models_that_bill_a_search_per_call_are_refused(model: str) -> None:
    # Priced by the database for their tokens only; each request also bills a web search
    # ($0.01-0.05 a call), which the reservation would not cover.
    for parse in (parse_chat, parse_responses):
        body = (
            chat_body(model=model)
            if parse is parse_chat
            else json.dumps({"model": model, "input": "hi"}).encode()
        )
        with pytest.raises(ProxyError) as exc:
            parse(body)
        assert exc.value.status == 400 and "searches the web" in str(exc.value)


def test_clamp_goes_into_the_field_the_client_used() -> None:
    assert parse_chat(chat_body(max_tokens=50)).output_fields == ("max_tokens",)
    assert parse_chat(chat_body(max_completion_tokens=50)).output_fields == (
        "max_completion_tokens",
    )
    assert parse_chat(chat_body()).output_fields == ("max_completion_tokens",)
    assert parse_chat(chat_body(n=3)).choices == 3


def test_a_limit_too_large_to_price_is_no_limit_even_beside_a_small_one() -> None:
    # Reserving for the small one would forward the huge one untouched: a provider that
    # honoured it would not stop where the reservation does.
    both = parse_chat(chat_body(max_completion_tokens=5, max_tokens=1 << 62))
    assert both.requested_output_tokens is None  # the ledger writes its bound...
    assert both.output_fields == ("max_completion_tokens", "max_tokens")  # ...into both
    assert parse_chat(chat_body(max_tokens=1 << 62)).requested_output_tokens is None
    small = parse_chat(chat_body(max_completion_tokens=5, max_tokens=9))
    assert small.requested_output_tokens == 9  # both priceable: the larger is reserved


def test_embeddings_beyond_the_providers_limits_are_refused_before_any_work() -> None:
    def embed(input_: object) -> bytes:
        return json.dumps({"model": "text-embedding-3-small", "input": input_}).encode()

    assert parse_embeddings(embed(["a"] * 2048)).model  # the provider's most: fine
    assert parse_embeddings(embed(list(range(3000)))).model  # one token array, not 3000 inputs
    for refused in (["a"] * 2049, [[1]] * 2049, list(range(8193)), [[1], list(range(8193))]):
        with pytest.raises(ProxyError) as caught:
            parse_embeddings(embed(refused))
        assert (caught.value.status, caught.value.code) == (400, "array_above_max_length")


def test_embeddings_token_arrays_are_bounded_by_the_body() -> None:
    raw = json.dumps({"model": "e", "input": [[1, 2, 3], [4, 5]]}).encode()
    assert parse_embeddings(raw).input_tokens_bound >= 5


def test_cache_key_ignores_order_user_and_stream_but_not_sampling() -> None:
    a = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0}
    b = {
        "temperature": 0,
        "stream": True,
        "user": "u",
        "messages": [{"content": "x", "role": "user"}],
        "model": "m",
    }
    assert cache_digest(endpoint="chat.completions", body=a) == cache_digest(
        endpoint="chat.completions", body=b
    )
    c = {**a, "temperature": 1}
    assert cache_digest(endpoint="chat.completions", body=a) != cache_digest(
        endpoint="chat.completions", body=c
    )
    assert cache_digest(endpoint="chat.completions", body=a) != cache_digest(
        endpoint="responses", body=a
    )


def test_cache_bypass_headers() -> None:
    assert cache_mode({"cache-control": "no-cache"}) == REFRESH
    assert cache_mode({"cache-control": "No-Cache, no-store"}) == OFF
    assert cache_mode({"cache-control": "private, no-store"}) == OFF
    assert cache_mode({"x-budgetllm-cache": "OFF"}) == OFF
    assert cache_mode({"cache-control": "no-cache", "x-budgetllm-cache": "off"}) == OFF
    assert cache_mode({"cache-control": "max-age=0"}) == USE
    assert cache_mode({}) == USE


def test_cache_entry_round_trip() -> None:
    entry = CacheEntry(b'{"a":\n1}', 123, 10, 2, 20)
    assert CacheEntry.loads(entry.dumps()) == entry


def sse(*payloads: dict) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(p).encode() + b"\n\n" for p in payloads)
        + b"data: [DONE]\n\n"
    )


def test_a_chat_stream_assembles_into_the_full_answer_and_replays_back() -> None:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    stream = sse(
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    )
    state = ChatStream(strip_usage=True)
    splitter = SseSplitter()
    forwarded = []
    for i in range(0, len(stream), 7):  # arbitrary network chunking
        for event in splitter.feed(stream[i : i + 7]):
            out = state.process(event)
            if out is not None:
                forwarded.append(out)
    assert state.done and state.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert not any(b'"usage"' in e for e in forwarded)  # stripped: the client did not ask
    full = chat_assemble(state.chunks(), state.usage)
    assert full["choices"][0]["message"]["content"] == "Hello"
    assert full["choices"][0]["finish_reason"] == "stop"
    replay = chat_replay(full, include_usage=True)
    assert replay[-1] == b"data: [DONE]\n\n"
    last = json.loads(replay[-2][6:])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 2
    assert state.output_estimate() == 5  # "Hello": 5 bytes >= its tokens


def test_a_chat_stream_takes_the_usage_only_from_a_usage_object() -> None:
    state = ChatStream(strip_usage=True)
    # OpenAI sends "usage": null on every chunk when usage was asked for; text may quote it.
    word = b'data: {"choices":[{"index":0,"delta":{"content":"\\"usage\\":{}"}}],"usage":null}\n\n'
    assert state.process(word) == word and state.usage is None
    spaced = b'data: {"choices": [], "usage": null, "x": {"usage": {"prompt_tokens": 9}}}\n\n'
    assert state.process(spaced) is None  # the usage chunk we asked for: stripped
    assert state.usage is None  # a nested "usage" is not the chunk's own
    last = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n'
    assert state.process(last) is None
    assert state.usage == {"prompt_tokens": 3, "completion_tokens": 2}


def test_responses_replay_is_a_valid_event_sequence() -> None:
    full = completed_response()
    events = responses_replay(full)
    state = ResponsesStream()
    for event in events:
        state.process(event)
    assert state.completed and state.response == full
    kinds = [e.split(b"\n", 1)[0] for e in events]
    assert kinds[0] == b"event: response.created" and kinds[-1] == b"event: response.completed"
    seqs = [json.loads(e.split(b"data: ", 1)[1])["sequence_number"] for e in events]
    assert seqs == list(range(len(events)))


def test_responses_replay_streams_the_logprobs_with_the_text() -> None:
    # Asked for with include=["message.output_text.logprobs"], logprobs stream with the
    # text deltas; a client reading them there got [] from a hit (and the whole list in
    # the part before any text had arrived).
    full = completed_response()
    logprobs = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
    full["output"][0]["content"][0]["logprobs"] = logprobs
    events = {}
    for event in responses_replay(full):
        payload = json.loads(event.split(b"data: ", 1)[1])
        events[payload["type"]] = payload
    assert events["response.content_part.added"]["part"]["logprobs"] == []
    assert events["response.output_text.delta"]["logprobs"] == logprobs
    assert events["response.output_text.done"]["logprobs"] == logprobs
    assert events["response.completed"]["response"] == full


@pytest.mark.parametrize(
    ("header", "micros"),
    [
        ("0.25", 250_000),
        ("0.5 ", 500_000),
        ("0.0000019", 1),  # below a micro-dollar: rounded down
        # More digits than Decimal's 28-digit context: the product must not round up to
        # the next micro-dollar (a header may only lower the run cap, never by less).
        ("0.0000019999999999999999999999999999", 1),
        ("1234.99999999999999999999999999999", 1_234_999_999),
        ("1e309", 2**53 - 1),  # held to what the ledger counts exactly
    ],
)
def test_a_run_budget_header_is_rounded_down_to_whole_micro_dollars(
    header: str, micros: int
) -> None:
    from proxy.views import run_headers

    headers = {"x-budgetllm-run-id": "r1", "x-budgetllm-run-budget-usd": header}
    assert run_headers(headers) == ("r1", micros)


@pytest.mark.parametrize(
    ("raw", "run_id"),
    [
        (b"agent-7", "agent-7"),
        ("agent-é€".encode(), "agent-é€"),  # UTF-8, as curl sends it
        ("agent-é".encode("latin-1"), "agent-é"),  # Latin-1, as a browser's fetch sends it
    ],
)
def test_a_run_id_header_is_read_as_utf8_and_else_as_latin1(raw: bytes, run_id: str) -> None:
    from proxy.views import run_headers

    # ASGI header bytes, read as the proxy reads them.
    assert run_headers({"x-budgetllm-run-id": raw.decode("latin-1")}) == (run_id, None)


@pytest.mark.parametrize("header", ["-1", "NaN", "inf", "-inf", ",", "", "1,5", "sNaN"])
def test_a_run_budget_header_that_is_no_amount_is_refused(header: str) -> None:
    from proxy.views import run_headers

    with pytest.raises(ProxyError) as exc:
        run_headers({"x-budgetllm-run-id": "r1", "x-budgetllm-run-budget-usd": header})
    assert exc.value.status == 400 and exc.value.code == "invalid_run_budget"


def test_a_streamed_refusal_keeps_its_logprobs_in_the_cached_answer() -> None:
    # n=2, interleaved: choice 0 refuses (its logprobs come under "refusal", "content"
    # null), choice 1 answers. The cached answer is what the provider's plain answer is.
    def lp(token: str) -> dict:
        return {"token": token, "logprob": -0.1, "bytes": list(token.encode()), "top_logprobs": []}

    def choice(i: int, delta: dict, logprobs: dict | None, finish: str | None = None) -> dict:
        return {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    stream = sse(
        *(
            {**base, "choices": [c], "obfuscation": "Xy"}
            for c in (
                choice(0, {"role": "assistant", "content": None, "refusal": None}, None),
                choice(1, {"role": "assistant", "content": ""}, {"content": [], "refusal": None}),
                choice(0, {"refusal": "I can"}, {"content": None, "refusal": [lp("I can")]}),
                choice(1, {"content": "Hi"}, {"content": [lp("Hi")], "refusal": None}),
                choice(0, {"refusal": "'t"}, {"content": None, "refusal": [lp("'t")]}),
                choice(0, {}, None, "stop"),
                choice(1, {}, None, "stop"),
            )
        ),
        {**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
    )
    state = ChatStream(strip_usage=True)
    for event in SseSplitter().feed(stream):
        state.process(event)
    refused, answered = chat_assemble(state.chunks(), state.usage)["choices"]
    assert refused["message"]["refusal"] == "I can't"
    assert refused["logprobs"] == {"content": None, "refusal": [lp("I can"), lp("'t")]}
    assert answered["message"]["content"] == "Hi"
    assert answered["logprobs"] == {"content": [lp("Hi")], "refusal": None}


def test_a_stream_without_usage_is_charged_its_estimate_unless_the_provider_got_ahead() -> None:
    from proxy.views import unreported_output_tokens

    assert unreported_output_tokens(120, 16384, fell_behind=False, reasons=False) == 120
    assert unreported_output_tokens(90_000, 16384, fell_behind=False, reasons=False) == 16384
    # Kept events overflowed: no estimate.
    assert unreported_output_tokens(None, 16384, fell_behind=False, reasons=False) == 16384
    # Hidden reasoning tokens, or output left unread in the buffers (a stalled client, or
    # reading from the provider paused for a slow one): all that was allowed.
    assert unreported_output_tokens(120, 16384, fell_behind=False, reasons=True) == 16384
    assert unreported_output_tokens(120, 16384, fell_behind=True, reasons=False) == 16384


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 1000.0, "completion_tokens": 200.0},
        {"prompt_tokens": "1000", "completion_tokens": "200"},
        {"input_tokens": 999.5, "output_tokens": 199.2},
    ],
)
def test_usage_counts_written_as_floats_or_strings_are_not_read_as_zero(usage: dict) -> None:
    # A count the provider (or a gateway in front of it) writes as 1000.0 or "1000" was
    # read as 0: a reported usage settled for nothing. Read it, rounded up.
    from proxy.usage import tokens_from_usage

    tokens = tokens_from_usage(usage)
    assert tokens is not None and tokens.input >= 1000 and tokens.output >= 200
