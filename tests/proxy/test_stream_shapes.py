"""Streams shaped as OpenAI really sends them (error events, a connection lost after the
last event, refusals, tool calls...), written out event by event by the fake server
(`X-Fake-Script`), through the official SDK."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import openai
import pytest

from budgets.models import Cap
from tests.proxy.conftest import ProxyServer, Tenant
from tests.proxy.helpers import eventually, ledger_totals, records

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "Write a long story"}]
USAGE = {
    "prompt_tokens": 5,
    "completion_tokens": 3,
    "total_tokens": 8,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}
# What OpenAI sends when a stream fails after its first events.
PROVIDER_ERROR = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}


def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    payload = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_x",
        "choices": choices,
        "usage": None,
        "obfuscation": "aB3d",
        **extra,
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def delta(content: str, *, index: int = 0, finish: str | None = None) -> dict[str, Any]:
    return {
        "index": index,
        "delta": {"content": content},
        "logprobs": None,
        "finish_reason": finish,
    }


def script(*events: bytes, end: str = "eof") -> dict[str, str]:
    return {"X-Fake-Script": base64.b64encode(b"".join(events)).decode(), "X-Fake-Script-End": end}


def test_a_provider_error_event_then_done_is_an_error_never_a_cached_answer(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    """OpenAI can fail a stream mid-way with `data: {"error": ...}` and still end it with
    `data: [DONE]`. The client's SDK raises; the half answer must not be cached (it was
    replayed to the next identical request as a whole answer, finish_reason "stop")."""
    tenant.cap("10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    events = [
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}]),
        chunk([delta("Once")]),
        chunk([delta(" upon")]),
        b"data: " + json.dumps(PROVIDER_ERROR).encode() + b"\n\n",
        b"data: [DONE]\n\n",
    ]
    client = proxy.client(tenant.raw, max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=script(*events)
    )
    with pytest.raises(openai.APIError, match="had an error"):
        for _ in stream:
            pass
    [first] = eventually(lambda: records(tenant.account))
    assert first.http_status == 502  # failed mid-way, not a 200
    assert first.cost_micros > 0

    # The same request again: answered by the provider, not from a cache of the half answer.
    again = proxy.client(tenant.raw, max_retries=0).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert again.headers["x-budgetllm-cache"] == "MISS"
    assert again.parse().choices[0].message.content.startswith("word0 word1")
    spent = sum(r.cost_micros for r in records(tenant.account))
    assert ledger_totals(tenant.account) == (spent, 0)


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_a_connection_lost_after_the_final_event_is_a_whole_answer(
    proxy: ProxyServer, tenant: Tenant, endpoint: str
) -> None:
    """The provider's connection drops after its final event ([DONE], response.completed)
    but before the end of the HTTP body: the client has the whole answer and its usage, so
    it must not get an error (its SDK would raise, and a retry pays twice)."""
    tenant.cap("10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    client = proxy.client(tenant.raw, max_retries=0)
    if endpoint == "chat":
        events = [
            chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}]),
            chunk([delta("Hi")]),
            chunk([delta(" there", finish="stop")]),
            chunk([], usage=USAGE),
            b"data: [DONE]\n\n",
        ]
        got = list(
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                stream=True,
                extra_headers=script(*events, end="reset"),
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
        assert text == "Hi there"
        output = USAGE["completion_tokens"]
    else:
        response = {
            "id": "resp_x",
            "object": "response",
            "created_at": 1,
            "status": "completed",
            "model": "gpt-4o-mini",
            "output": [
                {
                    "id": "msg_x",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hi", "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": 5,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 1,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 6,
            },
        }
        events = [
            b"event: response.output_text.delta\ndata: "
            + json.dumps(
                {
                    "type": "response.output_text.delta",
                    "sequence_number": 0,
                    "item_id": "msg_x",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": "Hi",
                    "logprobs": [],
                    "obfuscation": "q1",
                }
            ).encode()
            + b"\n\n",
            b"event: response.completed\ndata: "
            + json.dumps(
                {"type": "response.completed", "sequence_number": 1, "response": response}
            ).encode()
            + b"\n\n",
        ]
        kinds = [
            e.type
            for e in client.responses.create(
                model="gpt-4o-mini",
                input="Say hi",
                stream=True,
                extra_headers=script(*events, end="reset"),
            )
        ]
        assert kinds == ["response.output_text.delta", "response.completed"]
        output = 1
    [record] = eventually(lambda: records(tenant.account))
    assert record.http_status == 200
    assert record.output_tokens == output  # settled from the provider's usage
    assert ledger_totals(tenant.account) == (record.cost_micros, 0)


def test_our_usage_chunk_with_obfuscation_is_stripped_and_the_rest_passes_as_written(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    """Chunks carry `obfuscation` (OpenAI's include_obfuscation, on by default): they pass
    as they came, and the usage chunk we asked for is still taken out."""
    events = [chunk([delta("Hi", finish="stop")]), chunk([], usage=USAGE), b"data: [DONE]\n\n"]
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    headers = {"Authorization": f"Bearer {tenant.raw}", **script(*events)}
    resp = httpx.post(proxy.base_url + "/chat/completions", json=body, headers=headers)
    assert resp.status_code == 200
    assert b'"content":"Hi"' in resp.content and resp.content.endswith(b"data: [DONE]\n\n")
    assert b'"prompt_tokens":5' not in resp.content  # our usage chunk, stripped


def test_a_failed_response_stream_is_recorded_as_a_failure(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    """`response.failed` ends a Responses stream the provider failed: settled from its
    usage, never cached, and recorded as the failure it is (it was a 200)."""
    tenant.cap("10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)

    def event(kind: str, seq: int, **payload: Any) -> bytes:
        body = {"type": kind, "sequence_number": seq, **payload}
        return f"event: {kind}\ndata: {json.dumps(body)}\n\n".encode()

    response = {"id": "resp_x", "object": "response", "created_at": 1, "model": "gpt-4o-mini"}
    usage = {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 2},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 12,
    }
    failed = {
        **response,
        "status": "failed",
        "output": [],
        "usage": usage,
        "error": {"code": "server_error", "message": "The model failed."},
    }
    events = [
        event("response.created", 0, response={**response, "status": "in_progress"}),
        event(
            "response.output_text.delta",
            1,
            item_id="msg_x",
            output_index=0,
            content_index=0,
            delta="Hello wor",
            logprobs=[],
            obfuscation="abc",
        ),
        event("response.failed", 2, response=failed),
    ]
    client = proxy.client(tenant.raw, max_retries=0)
    kinds = [
        e.type
        for e in client.responses.create(
            model="gpt-4o-mini", input="hi", stream=True, extra_headers=script(*events)
        )
    ]
    assert kinds == ["response.created", "response.output_text.delta", "response.failed"]
    [record] = eventually(lambda: records(tenant.account))
    assert record.http_status == 502
    assert (record.input_tokens, record.cached_tokens, record.output_tokens) == (5, 2, 7)
    assert ledger_totals(tenant.account) == (record.cost_micros, 0)
