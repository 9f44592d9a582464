"""The stream relay (`_EventRelay.take`): whatever way the provider's bytes are cut into
reads, the client gets the same events, the usage is captured and the final event waits
for the settle; and under uvicorn, events go straight to the client's transport unless
uvicorn would have made the send wait, and a whole answer goes out in one write."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from proxy.sse import (
    ChatStream,
    ResponsesStream,
    SseSplitter,
    chat_assemble,
    chat_replay,
    responses_replay,
)
from proxy.views import Exchange, _EventRelay
from tests.proxy.helpers import completed_response

USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def chat_events(*, crlf_from: int | None = None, crlf_until: int = 99) -> list[bytes]:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    words = ["Hel", "lo", " the", 're "usage": {} and [DONE]', " end"]
    payloads: list[dict[str, Any]] = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        *({**base, "choices": [{"index": 0, "delta": {"content": w}}]} for w in words),
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    # A nested "usage" object (not the chunk's own) sends its read the long way round.
    payloads[3]["x_meta"] = {"usage": {"n": 1}}
    events = [b"data: " + json.dumps({**p, "usage": None}).encode() + b"\n\n" for p in payloads]
    events.append(
        b"data: " + json.dumps({**base, "choices": [], "usage": USAGE}).encode() + b"\n\n"
    )
    events.append(b"data: [DONE]\n\n")
    if crlf_from is not None:
        events[crlf_from:crlf_until] = [
            e.replace(b"\n", b"\r\n") for e in events[crlf_from:crlf_until]
        ]
    return events


class Sent:
    """An ASGI send that finishes at once and records the bodies."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.bodies.append(message["body"])


def relay_all(reads: list[bytes], state: ChatStream | ResponsesStream) -> tuple[bytes, _EventRelay]:
    sent = Sent()
    loop = asyncio.new_event_loop()  # for its clock only: every send here finishes at once
    try:
        relay = _EventRelay(sent, state, loop)
        for data in reads:
            assert relay.take(data) is True and relay.error is None
    finally:
        loop.close()
    return b"".join(sent.bodies), relay


def run(coro: Coroutine[Any, Any, None]) -> None:
    """In a thread of its own: the browser tests' Playwright keeps a loop running in the
    main thread for the whole session."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


def cuts(stream: bytes, events: list[bytes]) -> dict[str, list[bytes]]:
    """The same bytes read in several ways a network may cut them."""
    return {
        "one event a read": events,
        "all at once": [stream],
        "two events a read": [b"".join(events[i : i + 2]) for i in range(0, len(events), 2)],
        "7 bytes a read": [stream[i : i + 7] for i in range(0, len(stream), 7)],
        "cut before blank line": [stream[: len(events[0]) - 1], stream[len(events[0]) - 1 :]],
    }


@pytest.mark.parametrize(
    ("crlf_from", "crlf_until"),
    [(None, 99), (0, 99), (3, 99), (0, 3)],  # LF; CRLF; LF then CRLF; CRLF then LF
)
@pytest.mark.parametrize("strip_usage", [True, False])
def test_every_cut_of_a_chat_stream_relays_the_same_events(
    crlf_from: int | None, crlf_until: int, strip_usage: bool
) -> None:
    events = chat_events(crlf_from=crlf_from, crlf_until=crlf_until)
    stream = b"".join(events)
    results = {}
    for how, reads in cuts(stream, events).items():
        state = ChatStream(strip_usage=strip_usage)
        forwarded, relay = relay_all(reads, state)
        assert state.usage == USAGE, how
        assert state.done and relay.held == [b"data: [DONE]\n\n"], how  # waits for the settle
        results[how] = (forwarded.replace(b"\r\n", b"\n"), state.chunks(), state.output_estimate())
    forwarded, chunks, estimate = results["one event a read"]
    assert all(r == results["one event a read"] for r in results.values())
    assert (b'"usage": {"prompt' in forwarded) is not strip_usage  # our usage chunk: stripped
    assert forwarded.count(b"data: ") == len(events) - 1 - strip_usage  # all but [DONE]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == 'Hello there "usage": {} and [DONE] end'
    assert estimate == len(text.encode())


def test_what_follows_the_final_event_waits_with_it() -> None:
    events = chat_events()
    stray = b'data: {"choices":[{"index":0,"delta":{"content":"late"}}]}\n\n'
    forwarded, relay = relay_all([*events, stray], ChatStream(strip_usage=True))
    assert relay.held == [b"data: [DONE]\n\n", stray]  # sent after the settle, in order
    assert b"late" not in forwarded


def test_every_cut_of_a_responses_stream_relays_the_same_events() -> None:
    full = completed_response()
    events = responses_replay(full)
    stream = b"".join(events)
    for how, reads in cuts(stream, events).items():
        state = ResponsesStream()
        forwarded, relay = relay_all(reads, state)
        assert forwarded == b"".join(events[:-1]), how
        assert relay.held == [events[-1]] and state.completed and state.usage == full["usage"]
        assert state.output_estimate() == len(b"Hi there"), how


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def uvicorn_cycle(
    transport: Transport, *, keep_alive: bool = True, on_response: Any = lambda: None
) -> RequestResponseCycle:
    return RequestResponseCycle(
        scope={"type": "http", "method": "POST", "http_version": "1.1"},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test"),
        access_log=False,
        default_headers=[(b"server", b"uvicorn")],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=on_response,
    )


def test_under_uvicorn_a_whole_answer_goes_out_in_one_write() -> None:
    async def main() -> None:
        body = b'{"ok": true}'
        # What uvicorn writes for the same answer sent the ASGI way: two pieces.
        reference = Transport()
        sent_by_asgi = Exchange({"headers": []}, Sent(), uvicorn_cycle(reference).send)
        await sent_by_asgi.start(200, b"application/json", [(b"content-length", b"12")])
        await sent_by_asgi.send({"type": "http.response.body", "body": body})
        assert len(reference.written) == 2

        transport, completed = Transport(), []
        cycle = uvicorn_cycle(transport, on_response=lambda: completed.append(True))
        ex = Exchange({"headers": []}, Sent(), cycle.send)
        ex.request_id_str = sent_by_asgi.request_id_str  # the one header that differs
        await ex.respond(200, body)
        assert transport.written == [b"".join(reference.written)]
        assert cycle.transport is transport  # given back
        assert cycle.response_complete and completed == [True]  # uvicorn's bookkeeping ran

    run(main())


@pytest.mark.parametrize("case", ["writing paused", "not kept alive", "another server"])
def test_an_answer_goes_through_send_when_uvicorn_could_wait_or_close(case: str) -> None:
    async def main() -> None:
        transport = Transport()
        cycle = uvicorn_cycle(transport, keep_alive=case != "not kept alive")
        send: Any = cycle.send
        if case == "writing paused":
            cycle.flow.pause_writing()
            asyncio.get_running_loop().call_soon(cycle.flow.resume_writing)
        elif case == "another server":
            send = lambda message: cycle.send(message)  # noqa: E731 (not uvicorn's method)
        await Exchange({"headers": []}, Sent(), send).respond(200, b"{}")
        assert len(transport.written) == 2 and transport.written[1] == b"{}"
        assert cycle.transport is transport and cycle.response_complete
        assert transport.closed == (case == "not kept alive")

    run(main())


def test_under_uvicorn_events_go_to_the_transport_unless_the_client_lags() -> None:
    async def main() -> None:
        transport = Transport()
        cycle = uvicorn_cycle(transport)
        await cycle.send({"type": "http.response.start", "status": 200, "headers": []})
        relay = _EventRelay(cycle.send, ChatStream(strip_usage=True), asyncio.get_running_loop())
        relay.write_directly()
        assert relay.cycle is cycle
        sends: list[dict[str, Any]] = []

        def counted(message: dict[str, Any]) -> Any:
            sends.append(message)
            return cycle.send(message)

        relay.send = counted
        first, second, third = chat_events()[:3]

        assert relay.take(first) is True
        assert transport.written[-1] == b"%x\r\n%s\r\n" % (len(first), first)  # uvicorn's framing
        assert sends == []  # written without a send

        cycle.flow.pause_writing()  # the client's socket buffer is full
        assert relay.take(second) is False and relay.pending is not None
        assert [m["body"] for m in sends] == [second]
        assert transport.written[-1] != b"%x\r\n%s\r\n" % (len(second), second)
        finishing = asyncio.ensure_future(relay.finish_send())
        await asyncio.sleep(0)
        assert not finishing.done()  # uvicorn's send waits for the drain
        cycle.flow.resume_writing()
        await finishing
        assert transport.written[-1] == b"%x\r\n%s\r\n" % (len(second), second)

        cycle.disconnected = True  # gone: uvicorn's send drops the bytes, and so do we
        written = len(transport.written)
        assert relay.take(third) is True and len(transport.written) == written

    run(main())


def test_a_response_that_is_not_chunked_is_never_written_around_send() -> None:
    async def main() -> None:
        cycle = uvicorn_cycle(Transport())
        headers = [(b"content-length", b"100")]
        await cycle.send({"type": "http.response.start", "status": 200, "headers": headers})
        relay = _EventRelay(cycle.send, ChatStream(strip_usage=True), asyncio.get_running_loop())
        relay.write_directly()
        assert relay.cycle is None

        other = _EventRelay(Sent(), ChatStream(strip_usage=True), asyncio.get_running_loop())
        other.write_directly()  # another server's send
        assert other.cycle is None

    run(main())


def test_the_splitter_keeps_an_unfinished_event_for_the_next_read() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b"data: 1\n\ndata: 2") == [b"data: 1\n\n"]
    assert splitter.partial == b"data: 2"
    assert splitter.feed(b"\n\n") == [b"data: 2\n\n"] and not splitter.partial
    # CRLF line ends, the blank line cut between two reads
    assert splitter.feed(b"data: 3\r\n\r") == []
    assert splitter.feed(b"\ndata: 4\r\n\r\n") == [b"data: 3\n\n", b"data: 4\n\n"]


def test_an_event_over_many_reads_is_cut_out_in_time_linear_in_its_size() -> None:
    # A Responses answer's last events carry the whole answer (with logprobs asked for,
    # megabytes), over hundreds of reads. Joined again at every read, a 16 MiB event took
    # 2.8 s of the worker's loop, against ~20 ms for the same bytes in one read.
    event = b"event: response.output_text.done\ndata: " + b"x" * (16 << 20) + b"\n\n"
    reads = [event[i : i + 65536] for i in range(0, len(event), 65536)]

    def split(pieces: list[bytes]) -> float:
        splitter = SseSplitter()
        started = time.perf_counter()
        out = [e for piece in pieces for e in splitter.feed(piece)]
        took = time.perf_counter() - started
        assert out == [event] and not splitter.partial
        return took

    at_once = min(split([event]) for _ in range(3))
    assert min(split(reads) for _ in range(2)) < 20 * at_once + 0.1


def test_extra_blank_lines_between_events_do_not_hide_the_final_one() -> None:
    events = chat_events()
    stream = b"\n".join(events)  # a blank line more between every two events
    for reads in ([stream], [e + b"\n" for e in events]):
        forwarded, relay = relay_all(reads, ChatStream(strip_usage=True))
        assert relay.held == [b"data: [DONE]\n\n"] and relay.state.usage == USAGE
    full = {"id": "r1", "object": "response", "status": "completed", "output": []}
    replay = responses_replay({**full, "usage": {"input_tokens": 1, "output_tokens": 0}})
    forwarded, relay = relay_all([b"\n".join(replay)], ResponsesStream())
    assert relay.held == [replay[-1]] and isinstance(relay.state, ResponsesStream)
    assert relay.state.completed


def test_a_legacy_function_call_survives_the_cache_and_counts_on_a_hang_up() -> None:
    # `functions` (deprecated, still served) streams `delta.function_call`, not tool_calls.
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    calls = [
        {"name": "get_w", "arguments": ""},
        {"arguments": '{"city":'},
        {"arguments": '"Pune"}'},
    ]
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "function_call": f}}]}
        for f in calls
    ]
    chunks.append(
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "function_call"}]}
    )
    state = ChatStream(strip_usage=True)
    for chunk in chunks:
        state.process(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    # A hang-up before the usage: the arguments streamed so far are charged.
    assert (state.output_estimate() or 0) >= len('get_w{"city":"Pune"}')
    full = chat_assemble(state.chunks(), USAGE)
    expected = {"name": "get_w", "arguments": '{"city":"Pune"}'}
    assert full["choices"][0]["message"]["function_call"] == expected
    # ... and a hit replayed as a stream carries it again.
    replayed = [
        json.loads(event[6:])
        for event in chat_replay(full, include_usage=False)
        if event != b"data: [DONE]\n\n"
    ]
    sent = [c["choices"][0]["delta"].get("function_call") for c in replayed]
    assert expected in sent


def test_a_responses_function_call_name_counts_on_a_hang_up() -> None:
    # A Responses stream names a function call only in `response.output_item.added` (the
    # arguments follow as deltas); the model generated, and OpenAI bills, the name's tokens
    # too. A hang-up before `response.completed` must charge at least name + arguments.
    name = "get_current_weather_for_a_city"
    item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": name}
    events = [
        b"event: response.output_item.added\ndata: "
        + json.dumps(
            {
                "type": "response.output_item.added",
                "sequence_number": 2,
                "output_index": 0,
                "item": {**item, "arguments": "", "status": "in_progress"},
            }
        ).encode()
        + b"\n\n",
        b"event: response.function_call_arguments.delta\ndata: "
        + json.dumps(
            {
                "type": "response.function_call_arguments.delta",
                "sequence_number": 3,
                "item_id": "fc_1",
                "output_index": 0,
                "delta": "{}",
            }
        ).encode()
        + b"\n\n",
    ]
    stream = b"".join(events)
    for how, reads in cuts(stream, events).items():
        _, relay = relay_all(reads, ResponsesStream())
        assert (relay.state.output_estimate() or 0) >= len(name + "{}"), how


def test_a_short_tool_call_counts_its_hidden_framing_on_a_hang_up() -> None:
    # OpenAI bills a tool call's framing (the recipient, its special tokens) as output:
    # gpt-4o's get_weather({"location":"Paris, France"}) billed 16 completion tokens, ~7
    # above its name and arguments. A call to `f` with `{}` is 3 bytes, billed ~9 tokens.
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1"}
    first = {"index": 0, "id": "call_1", "type": "function"}
    deltas = [
        {
            "role": "assistant",
            "tool_calls": [{**first, "function": {"name": "f", "arguments": ""}}],
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
    ]
    state = ChatStream(strip_usage=True)
    for delta in deltas:
        chunk = {**base, "choices": [{"index": 0, "delta": delta}]}
        state.process(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    assert (state.output_estimate() or 0) >= len("f{}") + 7
