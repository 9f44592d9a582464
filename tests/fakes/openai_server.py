"""A local stand-in for OpenAI's API, speaking its wire format.

Run it as a process: `python -m tests.fakes.openai_server --port 8765`. The tests
and benchmarks start it on 127.0.0.1 and point OPENAI_UPSTREAM_BASE_URL at
`http://127.0.0.1:<port>/v1`.

Behaviour, deterministic so tests can assert exact numbers:
- Keys: `Authorization: Bearer sk-…` is accepted; a key containing "invalid" gets
  OpenAI's 401 envelope, which quotes the key masked as OpenAI's does.
- Chat completions: the answer is `FAKE_WORDS` words (each one token), cut to
  max_tokens / max_completion_tokens; prompt_tokens = UTF-8 bytes of the messages'
  text // 4 (never more than the bytes, like a real BPE). n>1, tools (a tool call),
  response_format json_object (a JSON answer) and streaming (with
  stream_options.include_usage) are supported.
- Responses API and embeddings likewise, with usage.
- Control headers (what a test needs to force): `X-Fake-Status: 500` answers that
  status in the error envelope;
  `X-Fake-Delay-Ms: N` sleeps N ms before answering (and between stream events);
  `X-Fake-No-Usage: 1` omits the usage chunk of a stream;
  `X-Fake-Drop-After: N` closes the connection after N stream events;
  `X-Fake-Word-Bytes: N` pads every word of a chat answer to N bytes (a large answer
  that still counts one token a word); `X-Fake-Words: N` makes a chat answer N words
  long; `X-Fake-Obfuscation-Bytes: N` adds an `obfuscation` field of N characters to
  every chat stream chunk (as OpenAI pads chunks: bytes that carry no output);
  `X-Fake-Prompt-Tokens: N` reports N input tokens in the usage (what a real provider
  bills for content the fake cannot count, e.g. an image); `X-Fake-Cache-Write-Tokens: N`
  reports N of them as written to the prompt cache (`cache_write_tokens`, which newer
  models bill above the input price); `X-Fake-Truncate-Body: N`
  answers a non-streaming request 200 with its full Content-Length but closes the
  connection after N bytes of the body (the answer was generated, so it was billed);
  with X-Fake-Status, `X-Fake-Retry-After: N` and `X-Fake-Should-Retry: true|false` add
  the `retry-after` / `retry-after-ms` and `x-should-retry` headers OpenAI sends with some
  errors (advice to the client's SDK on retrying);
  `X-Fake-Script: <base64>` answers a stream 200 with exactly those SSE bytes, event by
  event (real-shaped events a test writes out: error events, refusals, tool calls...),
  and with `X-Fake-Script-End: reset` drops the connection after them instead of ending
  the body.
- `GET /_fake/stats` returns request counts per path; `GET /_fake/connections` the number
  of distinct client connections that sent them; `POST /_fake/reset` clears both.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
import uuid
from collections import Counter
from typing import Any

from aiohttp import web

FAKE_WORDS = 20
MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano", "text-embedding-3-small"]

stats: Counter[str] = Counter()
peers: set[Any] = set()


def error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status)


def text_bytes(value: Any) -> int:
    """UTF-8 bytes of every string inside a JSON value."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(text_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(text_bytes(v) for v in value.values())
    return 0


def check_auth(request: web.Request) -> web.Response | None:
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer sk-"):
        return error(401, "You didn't provide an API key.", "invalid_request_error")
    if "invalid" in auth:
        # As OpenAI does: the key's first 8 and last 4 characters, the rest masked.
        key = auth.removeprefix("Bearer ")
        shown = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:]
        return error(
            401,
            f"Incorrect API key provided: {shown}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        )
    return None


async def preamble(request: web.Request) -> web.Response | None:
    stats[request.path] += 1
    if request.transport is not None:
        peers.add(request.transport.get_extra_info("peername"))
    denied = check_auth(request)
    if denied is not None:
        return denied
    delay = int(request.headers.get("X-Fake-Delay-Ms", "0"))
    forced = request.headers.get("X-Fake-Status")
    if delay and not request.headers.get("X-Fake-Stream-Delay-Only"):
        await asyncio.sleep(delay / 1000)
    if forced:
        status = int(forced)
        resp = error(status, f"The fake server was told to fail with {status}.", "server_error")
        after = request.headers.get("X-Fake-Retry-After")
        if after:
            resp.headers["retry-after"] = after
            resp.headers["retry-after-ms"] = str(int(float(after) * 1000))
        should = request.headers.get("X-Fake-Should-Retry")
        if should:
            resp.headers["x-should-retry"] = should
        return resp
    return None


def reported_prompt_tokens(request: web.Request, counted: int) -> int:
    forced = request.headers.get("X-Fake-Prompt-Tokens")
    return int(forced) if forced else counted


def cache_write_tokens(request: web.Request) -> int:
    return int(request.headers.get("X-Fake-Cache-Write-Tokens", "0"))


async def json_answer(request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
    """The answer as JSON, or, with X-Fake-Truncate-Body: N, only its first N bytes."""
    cut = request.headers.get("X-Fake-Truncate-Body")
    if not cut:
        return web.json_response(payload)
    body = json.dumps(payload).encode()
    resp = web.StreamResponse(
        headers={"Content-Type": "application/json", "Content-Length": str(len(body))}
    )
    await resp.prepare(request)
    await resp.write(body[: int(cut)])
    if request.transport is not None:
        request.transport.close()
    return resp


async def scripted(request: web.Request) -> web.StreamResponse | None:
    """The stream the test wrote out (`X-Fake-Script`), or None when it wrote none."""
    script = request.headers.get("X-Fake-Script")
    if not script:
        return None
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    delay = int(request.headers.get("X-Fake-Delay-Ms", "0")) / 1000
    for event in base64.b64decode(script).split(b"\n\n"):
        if event:
            if delay:
                await asyncio.sleep(delay)
            await resp.write(event + b"\n\n")
    if request.headers.get("X-Fake-Script-End") == "reset":
        if request.transport is not None:
            request.transport.abort()
        return resp
    await resp.write_eof()
    return resp


def answer_words(limit: int | None, words: int = FAKE_WORDS) -> list[str]:
    count = words if limit is None else max(0, min(words, limit))
    return [f"word{i}" for i in range(count)]


async def models(request: web.Request) -> web.Response:
    early = await preamble(request)
    if early is not None:
        return early
    data = [
        {"id": m, "object": "model", "created": 1700000000, "owned_by": "openai"} for m in MODELS
    ]
    return web.json_response({"object": "list", "data": data})


def chat_choice(index: int, body: dict[str, Any], words: list[str]) -> tuple[dict[str, Any], int]:
    """One choice and its completion token count."""
    if body.get("tools"):
        tool = body["tools"][0]["function"]["name"]
        args = json.dumps({"words": len(words)})
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{index}",
                    "type": "function",
                    "function": {"name": tool, "arguments": args},
                }
            ],
            "refusal": None,
        }
        return {
            "index": index,
            "message": message,
            "finish_reason": "tool_calls",
            "logprobs": None,
        }, len(words)
    fmt = (body.get("response_format") or {}).get("type")
    content = json.dumps({"answer": " ".join(words)}) if fmt == "json_object" else " ".join(words)
    limited = body.get("max_completion_tokens", body.get("max_tokens"))
    finish = "length" if limited is not None and limited < FAKE_WORDS else "stop"
    message = {"role": "assistant", "content": content, "refusal": None}
    return {"index": index, "message": message, "finish_reason": finish, "logprobs": None}, len(
        words
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    early = await preamble(request) or await scripted(request)
    if early is not None:
        return early
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return error(
            400, "We could not parse the JSON body of your request.", "invalid_request_error"
        )
    model = body.get("model")
    if not model:
        return error(400, "you must provide a model parameter", "invalid_request_error")
    n = int(body.get("n") or 1)
    words = answer_words(
        body.get("max_completion_tokens", body.get("max_tokens")),
        int(request.headers.get("X-Fake-Words", FAKE_WORDS)),
    )
    pad = int(request.headers.get("X-Fake-Word-Bytes", "0"))
    if pad:
        words = [word.ljust(pad, "x") for word in words]
    prompt_tokens = reported_prompt_tokens(request, text_bytes(body.get("messages", [])) // 4)
    created = int(time.time())
    cid = f"chatcmpl-fake{stats[request.path]}"
    if body.get("stream"):
        return await stream_chat(request, body, cid, created, model, n, words, prompt_tokens)
    choices, completion_tokens = [], 0
    for i in range(n):
        choice, toks = chat_choice(i, body, words)
        choices.append(choice)
        completion_tokens += toks
    return await json_answer(
        request,
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {
                    "cached_tokens": 0,
                    "audio_tokens": 0,
                    "cache_write_tokens": cache_write_tokens(request),
                },
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
            "system_fingerprint": "fp_fake",
        },
    )


async def stream_chat(
    request: web.Request,
    body: dict[str, Any],
    cid: str,
    created: int,
    model: str,
    n: int,
    words: list[str],
    prompt_tokens: int,
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    delay = int(request.headers.get("X-Fake-Delay-Ms", "0")) / 1000
    drop_after = int(request.headers.get("X-Fake-Drop-After", "0"))
    obfuscation = int(request.headers.get("X-Fake-Obfuscation-Bytes", "0"))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    if request.headers.get("X-Fake-No-Usage"):
        include_usage = False
    sent = 0

    async def event(payload: dict[str, Any]) -> None:
        nonlocal sent
        base = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        base.update(payload)
        if obfuscation:
            base["obfuscation"] = "x" * obfuscation
        if delay:
            await asyncio.sleep(delay)
        await resp.write(b"data: " + json.dumps(base).encode() + b"\n\n")
        sent += 1
        if drop_after and sent >= drop_after:
            raise ConnectionResetError("fake server dropped the stream")

    try:
        for i in range(n):
            await event(
                {
                    "choices": [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ]
                }
            )
            for w, word in enumerate(words):
                text = word if w == 0 else " " + word
                await event(
                    {"choices": [{"index": i, "delta": {"content": text}, "finish_reason": None}]}
                )
            await event({"choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]})
        if include_usage:
            completion = len(words) * n
            await event(
                {
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion,
                        "total_tokens": prompt_tokens + completion,
                        "prompt_tokens_details": {"cached_tokens": 0},
                        "completion_tokens_details": {"reasoning_tokens": 0},
                    },
                }
            )
        await resp.write(b"data: [DONE]\n\n")
    except ConnectionResetError:
        if request.transport is not None:
            request.transport.close()
        return resp
    await resp.write_eof()
    return resp


async def responses(request: web.Request) -> web.StreamResponse:
    early = await preamble(request) or await scripted(request)
    if early is not None:
        return early
    body = await request.json()
    model = body.get("model")
    words = answer_words(body.get("max_output_tokens"))
    input_tokens = reported_prompt_tokens(
        request,
        text_bytes(body.get("input", "")) // 4 + text_bytes(body.get("instructions", "")) // 4,
    )
    text = " ".join(words)
    rid = f"resp_fake{stats[request.path]}"
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": 0,
            "cache_write_tokens": cache_write_tokens(request),
        },
        "output_tokens": len(words),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + len(words),
    }
    item = {
        "id": f"msg_{rid}",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    full = {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "output": [item],
        "usage": usage,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        # Echoed from the request, as OpenAI does.
        "metadata": body.get("metadata") or {},
        "user": body.get("user"),
        "store": body.get("store", True),
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
    }
    if not body.get("stream"):
        return await json_answer(request, full)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    delay = int(request.headers.get("X-Fake-Delay-Ms", "0")) / 1000
    seq = 0

    async def event(kind: str, payload: dict[str, Any]) -> None:
        nonlocal seq
        payload = {"type": kind, "sequence_number": seq, **payload}
        seq += 1
        if delay:
            await asyncio.sleep(delay)
        await resp.write(f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode())

    in_progress = {**full, "status": "in_progress", "output": [], "usage": None}
    await event("response.created", {"response": in_progress})
    for w, word in enumerate(words):
        await event(
            "response.output_text.delta",
            {
                "item_id": item["id"],
                "output_index": 0,
                "content_index": 0,
                "delta": word if w == 0 else " " + word,
            },
        )
    await event("response.completed", {"response": full})
    await resp.write_eof()
    return resp


async def embeddings(request: web.Request) -> web.Response:
    early = await preamble(request)
    if early is not None:
        return early
    body = await request.json()
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    tokens = reported_prompt_tokens(request, text_bytes(items) // 4)
    data = [
        {"object": "embedding", "index": i, "embedding": [0.1 * ((i + j) % 7) for j in range(8)]}
        for i in range(len(items))
    ]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def fake_stats(request: web.Request) -> web.Response:
    return web.json_response(dict(stats))


async def fake_connections(request: web.Request) -> web.Response:
    return web.json_response({"connections": len(peers)})


async def fake_reset(request: web.Request) -> web.Response:
    stats.clear()
    peers.clear()
    return web.json_response({})


async def _request_id(request: web.Request, response: web.StreamResponse) -> None:
    # As OpenAI names each request it answers (quoted to its support).
    response.headers.setdefault("x-request-id", f"req_fake{uuid.uuid4().hex[:12]}")


def make_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.on_response_prepare.append(_request_id)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/_fake/stats", fake_stats)
    app.router.add_get("/_fake/connections", fake_connections)
    app.router.add_post("/_fake/reset", fake_reset)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
