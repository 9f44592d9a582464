"""Server-sent events: relay helpers, usage capture, and conversion to/from full answers.

The relay forwards whole events as they arrive (never the whole stream). Per event it
does only byte searches; JSON is parsed for the one event that carries the usage, and,
after the stream, for the stored events when the answer goes into the cache or a
disconnect needs an estimate.

The searches use `find()`, not `in`: on CPython 3.12 `part in data` for bytes first tries
`part` as an integer (for `65 in b"A"`) and builds a TypeError message it then throws
away, about 2,600 instructions per search, which was a third of relaying an event.
"""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"
# Beyond this many bytes of stored events we stop keeping them: the answer is not cached
# and a disconnect is charged at the full reservation (an over-count, never an under-count).
# A plain answer beyond it is not cached either (proxy/views.py: relay_plain).
MAX_KEPT_BYTES = 4 * 1024 * 1024


class SseSplitter:
    """Cuts a byte stream into complete events (each ending in a blank line)."""

    __slots__ = ("partial", "more")

    def __init__(self) -> None:
        self.partial = b""  # the start of an event whose end has not arrived
        self.more: list[bytes] = []  # the reads after it, while that event goes on

    def feed(self, chunk: bytes) -> list[bytes]:
        partial = self.partial
        if not partial:
            buf = chunk
        else:
            more = self.more
            if (
                chunk.find(b"\n\n") == -1
                and chunk.find(b"\r") == -1
                and not (more[-1] if more else partial).endswith((b"\n", b"\r"))
            ):
                # Still inside one event longer than a read (a Responses answer's last
                # events hold the whole answer, logprobs and all): kept as pieces, joined
                # once it ends. Joined at every read, it was copied and searched again each
                # time: a 16 MiB event in 64 KiB reads held the worker's loop for 2.8 s.
                more.append(chunk)
                return []
            buf = b"".join((partial, *more, chunk)) if more else partial + chunk
            more.clear()
        if buf.find(b"\r") != -1:  # CRLF line ends, even one cut between two reads
            buf = buf.replace(b"\r\n", b"\n")
        parts = buf.split(b"\n\n")
        self.partial = parts.pop()
        # Extra blank lines between events are allowed (and ignored) in SSE: an event must
        # not start with them, or "data: [DONE]" and "event: ..." would go unrecognised.
        return [event + b"\n\n" for p in parts if (event := p.lstrip(b"\n"))]


def event_data(event: bytes) -> bytes:
    """The data field of one event (multi-line data joined with newlines)."""
    lines = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(lines)


def event_name(event: bytes) -> bytes:
    if event.startswith(b"event:"):
        end = event.find(b"\n")
        return event[6 : end if end != -1 else None].strip()
    return b""


def _events(kept: list[bytes]) -> list[bytes]:
    """Kept pieces (each one or more whole events) as single events, line ends as LF."""
    return b"".join(kept).replace(b"\r\n", b"\n").split(b"\n\n")


# Output tokens a tool call bills beyond its name and arguments, which a stream never
# shows: the recipient ("functions.<name>"), the call's special tokens, and for parallel
# calls a wrapper naming each one. OpenAI billed gpt-4o 16 completion tokens for one
# get_weather({"location":"Paris, France"}), about 7 more than its name and arguments; a
# call to `f` with `{}` (3 bytes) was estimated at 3. A generous allowance: it is only
# charged on a hang-up before the usage, and never beyond the reservation.
CALL_FRAMING_TOKENS = 32


def _has_usage_object(event: bytes) -> bool:
    """A "usage" key whose value is an object (not null), with one search per event."""
    at = event.find(b'"usage":')
    while at != -1:
        at += 8
        if event[at : at + 1] == b"{" or event[at : at + 2] == b" {":
            return True
        at = event.find(b'"usage":', at)
    return False


class _KeptEvents:
    """The events of a stream kept for after it (its cache entry, or the estimate of a
    disconnect): whole events, one or several to an item, up to `MAX_KEPT_BYTES`."""

    __slots__ = ("kept", "kept_bytes", "overflow", "failed")

    def __init__(self) -> None:
        self.kept: list[bytes] = []
        self.kept_bytes = 0
        self.overflow = False
        # The provider failed the stream in one of its events: `response.failed`, or a
        # chat stream's error event (found when the kept events are read after the stream,
        # `ChatStream.chunks`, never per event).
        self.failed = False

    def _keep(self, events: bytes) -> None:
        if self.overflow:
            return
        self.kept_bytes += len(events)
        if self.kept_bytes > MAX_KEPT_BYTES:
            self.overflow = True
            self.kept = []
        else:
            self.kept.append(events)


class ChatStream(_KeptEvents):
    """State of one relayed chat-completions stream."""

    __slots__ = ("strip_usage", "usage", "done")

    def __init__(self, *, strip_usage: bool) -> None:
        super().__init__()
        self.strip_usage = strip_usage
        self.usage: dict[str, Any] | None = None
        self.done = False

    def take_whole(self, events: bytes) -> bool:
        """Keep complete events (the caller saw them end in a blank line) that are
        forwarded as they are, in one piece: True when none of them needs a look of its
        own (no usage object, no [DONE]).

        Most reads hold one or more content chunks, and cutting them up only to join them
        again cost as much as the rest of relaying them. A false alarm (say "[DONE]" in
        the text) only sends the piece the long way round, through `process`. Events with
        CRLF line ends (they end in CR LF CR LF, not in a blank LF line) go that way too;
        a piece with CRLF events before LF ones is kept as it came: `_events` copes."""
        if events.find(b"[DONE]") != -1 or _has_usage_object(events):
            return False
        self._keep(events)
        return True

    def process(self, event: bytes) -> bytes | None:
        """The event to forward, or None to drop it (our own usage chunk)."""
        if event.startswith(DONE[:12]) and event_data(event) == b"[DONE]":
            self.done = True
            return event
        if _has_usage_object(event):
            payload = json.loads(event_data(event))
            usage = payload.get("usage")
            if isinstance(usage, dict):
                self.usage = usage
            if self.strip_usage and not payload.get("choices"):
                return None
            self._keep(event)
            return event
        self._keep(event)
        return event

    def chunks(self) -> list[dict[str, Any]]:
        out = []
        for event in _events(self.kept):
            data = event_data(event)
            if data and data != b"[DONE]":
                payload = json.loads(data)
                if not isinstance(payload, dict):
                    continue
                if "error" in payload:
                    # OpenAI fails a stream mid-way with `data: {"error": ...}`, and may
                    # still end it with [DONE]: what came before is no whole answer.
                    self.failed = True
                else:
                    out.append(payload)
        return out

    def output_estimate(self) -> int | None:
        """Upper bound on output tokens streamed so far (tokens <= UTF-8 bytes), or None."""
        if self.overflow:
            return None
        total = 0
        for chunk in self.chunks():
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                text = (delta.get("content") or "") + (delta.get("refusal") or "")
                calls = [*(delta.get("tool_calls") or ())]
                if delta.get("function_call"):  # the legacy `functions` parameter
                    calls.append({"function": delta["function_call"]})
                for call in calls:
                    fn = call.get("function") or {}
                    name = fn.get("name") or ""
                    if name:  # a call's first chunk: the only one that names it
                        total += CALL_FRAMING_TOKENS
                    text += name + (fn.get("arguments") or "")
                # Every event with text carries at least one token, and a token at least a byte.
                total += max(len(text.encode()), 1 if text else 0)
        return total


def chat_assemble(chunks: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
    """The non-streaming chat.completion equivalent of a finished stream."""
    first = chunks[0]
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for c in chunk.get("choices") or ():
            i = c.get("index", 0)
            slot = choices.setdefault(
                i,
                {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": {},
                    "function_call": None,
                    "finish_reason": None,
                    "logprobs": None,
                },
            )
            delta = c.get("delta") or {}
            if delta.get("role"):
                slot["role"] = delta["role"]
            if delta.get("content") is not None:
                slot["content"] = (slot["content"] or "") + delta["content"]
            if delta.get("refusal") is not None:
                slot["refusal"] = (slot["refusal"] or "") + delta["refusal"]
            for call in delta.get("tool_calls") or ():
                t = slot["tool_calls"].setdefault(
                    call.get("index", 0),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    t["id"] = call["id"]
                if call.get("type"):
                    t["type"] = call["type"]
                fn = call.get("function") or {}
                t["function"]["name"] += fn.get("name") or ""
                t["function"]["arguments"] += fn.get("arguments") or ""
            legacy = delta.get("function_call")
            if legacy:  # the legacy `functions` parameter streams one call this way
                f = slot["function_call"] or {"name": "", "arguments": ""}
                f["name"] += legacy.get("name") or ""
                f["arguments"] += legacy.get("arguments") or ""
                slot["function_call"] = f
            if c.get("finish_reason"):
                slot["finish_reason"] = c["finish_reason"]
            if c.get("logprobs"):
                # A refusal's logprobs stream under "refusal" (with "content" null): both
                # are kept, a part no chunk filled stays null, as in a plain answer.
                lp = slot["logprobs"] or {"content": None, "refusal": None}
                for part in ("content", "refusal"):
                    got = c["logprobs"].get(part)
                    if got is not None:
                        lp[part] = (lp[part] or []) + got
                slot["logprobs"] = lp
    out_choices = []
    for i in sorted(choices):
        slot = choices[i]
        message: dict[str, Any] = {
            "role": slot["role"],
            "content": slot["content"],
            "refusal": slot["refusal"],
        }
        if slot["tool_calls"]:
            message["tool_calls"] = [slot["tool_calls"][k] for k in sorted(slot["tool_calls"])]
        if slot["function_call"] is not None:
            message["function_call"] = slot["function_call"]
        out_choices.append(
            {
                "index": i,
                "message": message,
                "finish_reason": slot["finish_reason"],
                "logprobs": slot["logprobs"],
            }
        )
    full: dict[str, Any] = {
        "id": first.get("id"),
        "object": "chat.completion",
        "created": first.get("created"),
        "model": first.get("model"),
        "choices": out_choices,
        "usage": usage,
    }
    for extra in ("system_fingerprint", "service_tier"):
        if first.get(extra) is not None:
            full[extra] = first[extra]
    return full


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def chat_replay(full: dict[str, Any], *, include_usage: bool) -> list[bytes]:
    """A valid chat.completion.chunk stream equivalent to a cached full answer."""
    base: dict[str, Any] = {
        "id": full.get("id"),
        "object": "chat.completion.chunk",
        "created": full.get("created"),
        "model": full.get("model"),
    }
    for extra in ("system_fingerprint", "service_tier"):
        if full.get(extra) is not None:
            base[extra] = full[extra]
    if include_usage:
        base["usage"] = None
    events = []
    for choice in full.get("choices") or ():
        i = choice.get("index", 0)
        message = choice.get("message") or {}
        first_delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": ""}
        if message.get("content") is None:
            first_delta["content"] = None
        events.append(
            _data(
                {
                    **base,
                    "choices": [
                        {"index": i, "delta": first_delta, "logprobs": None, "finish_reason": None}
                    ],
                }
            )
        )
        delta: dict[str, Any] = {}
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("refusal"):
            delta["refusal"] = message["refusal"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {"index": k, **call} for k, call in enumerate(message["tool_calls"])
            ]
        if message.get("function_call"):
            delta["function_call"] = message["function_call"]
        if delta:
            events.append(
                _data(
                    {
                        **base,
                        "choices": [
                            {
                                "index": i,
                                "delta": delta,
                                "logprobs": choice.get("logprobs"),
                                "finish_reason": None,
                            }
                        ],
                    }
                )
            )
        events.append(
            _data(
                {
                    **base,
                    "choices": [
                        {
                            "index": i,
                            "delta": {},
                            "logprobs": None,
                            "finish_reason": choice.get("finish_reason") or "stop",
                        }
                    ],
                }
            )
        )
    if include_usage:
        events.append(_data({**base, "choices": [], "usage": full.get("usage")}))
    events.append(DONE)
    return events


# Kept for a hang-up's estimate beside the deltas: it carries a function call's name.
_ITEM_ADDED = b"response.output_item.added"
_TERMINAL_RESPONSE_EVENTS = (b"response.completed", b"response.incomplete", b"response.failed")


class ResponsesStream(_KeptEvents):
    """State of one relayed Responses API stream (usage comes in the terminal event)."""

    __slots__ = ("usage", "response", "done", "completed")

    def __init__(self) -> None:
        super().__init__()
        self.usage: dict[str, Any] | None = None
        self.response: dict[str, Any] | None = None
        self.completed = False
        self.done = False

    def take_whole(self, events: bytes) -> bool:
        """As `ChatStream.take_whole`: complete events with no terminal one among them."""
        for name in _TERMINAL_RESPONSE_EVENTS:
            if events.find(name) != -1:
                return False
        if events.find(b"delta") != -1 or events.find(_ITEM_ADDED) != -1:
            self._keep(events)
        return True

    def process(self, event: bytes) -> bytes:
        name = event_name(event)
        if name in _TERMINAL_RESPONSE_EVENTS:
            payload = json.loads(event_data(event))
            response = payload.get("response") or {}
            self.response = response
            usage = response.get("usage")
            if isinstance(usage, dict):
                self.usage = usage
            self.done = True
            self.completed = name == b"response.completed"
            self.failed = name == b"response.failed"
            return event
        if name.find(b"delta") != -1 or name == _ITEM_ADDED:
            self._keep(event)
        return event

    def output_estimate(self) -> int | None:
        if self.overflow:
            return None
        total = 0
        for event in _events(self.kept):
            name = event_name(event)
            if name == _ITEM_ADDED:
                # A function (or custom tool) call's name comes only here, never in a
                # delta, yet the model generated it and it is billed as output.
                item = json.loads(event_data(event)).get("item") or {}
                called = item.get("name") if isinstance(item, dict) else None
                if isinstance(called, str) and called:
                    total += max(len(called.encode()), 1) + CALL_FRAMING_TOKENS
                continue
            if name.find(b"delta") == -1:
                continue
            payload = json.loads(event_data(event))
            delta = payload.get("delta")
            if isinstance(delta, str) and delta:
                total += max(len(delta.encode()), 1)
        return total


def _event(kind: str, seq: int, payload: dict[str, Any]) -> bytes:
    body = json.dumps({"type": kind, "sequence_number": seq, **payload}, separators=(",", ":"))
    return f"event: {kind}\ndata: {body}\n\n".encode()


def responses_replay(full: dict[str, Any]) -> list[bytes]:
    """A valid Responses API event stream equivalent to a cached full response."""
    events: list[bytes] = []
    seq = 0

    def emit(kind: str, payload: dict[str, Any]) -> None:
        nonlocal seq
        events.append(_event(kind, seq, payload))
        seq += 1

    in_progress = {**full, "status": "in_progress", "output": [], "usage": None}
    emit("response.created", {"response": in_progress})
    emit("response.in_progress", {"response": in_progress})
    for idx, item in enumerate(full.get("output") or ()):
        item_id = item.get("id")
        kind = item.get("type")
        if kind == "message":
            emit(
                "response.output_item.added",
                {"output_index": idx, "item": {**item, "status": "in_progress", "content": []}},
            )
            for cidx, part in enumerate(item.get("content") or ()):
                where = {"item_id": item_id, "output_index": idx, "content_index": cidx}
                if part.get("type") == "output_text":
                    # Logprobs (asked for with include=["message.output_text.logprobs"])
                    # arrive with the text, as the provider streams them: a client reading
                    # them from the deltas gets them from a hit too.
                    logprobs = part.get("logprobs") or []
                    empty = {**part, "text": "", "annotations": []}
                    if "logprobs" in part:
                        empty["logprobs"] = []
                    emit("response.content_part.added", {**where, "part": empty})
                    emit(
                        "response.output_text.delta",
                        {**where, "delta": part.get("text", ""), "logprobs": logprobs},
                    )
                    emit(
                        "response.output_text.done",
                        {**where, "text": part.get("text", ""), "logprobs": logprobs},
                    )
                elif part.get("type") == "refusal":
                    emit("response.content_part.added", {**where, "part": {**part, "refusal": ""}})
                    emit("response.refusal.delta", {**where, "delta": part.get("refusal", "")})
                    emit("response.refusal.done", {**where, "refusal": part.get("refusal", "")})
                else:
                    emit("response.content_part.added", {**where, "part": part})
                emit("response.content_part.done", {**where, "part": part})
        elif kind == "function_call":
            emit(
                "response.output_item.added",
                {"output_index": idx, "item": {**item, "status": "in_progress", "arguments": ""}},
            )
            where = {"item_id": item_id, "output_index": idx}
            emit(
                "response.function_call_arguments.delta",
                {**where, "delta": item.get("arguments", "")},
            )
            emit(
                "response.function_call_arguments.done",
                {**where, "arguments": item.get("arguments", ""), "name": item.get("name")},
            )
        else:
            emit("response.output_item.added", {"output_index": idx, "item": item})
        emit("response.output_item.done", {"output_index": idx, "item": item})
    emit("response.completed", {"response": full})
    return events
