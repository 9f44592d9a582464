"""The /v1 endpoints: authenticate, bound, reserve, forward, relay, settle.

These are raw ASGI handlers served by `proxy.app` beside Django (see asgi.py): Django's
handler starts OS threads per request even for async views, which cost more CPU than
everything else here together. Database work runs in one `sync_to_async` per step.

Order of a generation request:
  key -> body (size limit) -> parse and bound -> paused? -> cache (hit: answer, $0)
  -> reserve worst case (ledger) -> clamp -> provider -> settle actual cost -> answer.
A non-streaming answer is settled before it is sent, and a stream's terminal event
(`[DONE]` / `response.completed`) is held back until the settle, so a client that sends
its next request right after the answer always meets a settled ledger (with the Redis
ledger the settle is on its way before the answer is sent: see `_settle_and_send`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

import orjson
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from budgets.ledger import MAX_EXACT, get_ledger
from budgets.pricing import UnknownModel, cost_micros
from budgets.services import (
    Admission,
    AdmitRequest,
    BudgetExceeded,
    Refused,
    UsageData,
    arecord_cache_hit,
    budget_admit,
    budget_keep_reserved,
    budget_release,
    budget_remaining,
    budget_settle,
)
from keys.services import ResolvedKey
from keys.vault import VaultError, decrypt

from . import metrics, reqlog
from .auth import key_authenticate
from .cache import (
    OFF,
    REFRESH,
    CacheEntry,
    Flight,
    cache_digest,
    cache_finish,
    cache_get_or_lead,
    cache_mode,
    cache_refresh_flight,
)
from .errors import ProxyError, bad_request, error_envelope
from .sse import (
    MAX_KEPT_BYTES,
    ChatStream,
    ResponsesStream,
    SseSplitter,
    chat_assemble,
    chat_replay,
    responses_replay,
)
from .upstream import ReadTimeout, UpstreamError, upstream_pool, upstream_url
from .usage import Tokens, tokens_from_usage
from .validation import (
    CHAT,
    EMBEDDINGS,
    PARSERS,
    RESPONSES,
    ParsedRequest,
    lone_surrogate,
    too_deep,
)

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_UVICORN_CYCLE: type | None
try:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    _UVICORN_CYCLE = RequestResponseCycle
except ImportError:  # no httptools: everything goes through `send`
    _UVICORN_CYCLE = None


def _uvicorn_cycle(send: Send) -> Any:
    """The uvicorn request cycle (httptools, the production setting) whose method `send`
    is, when it has every attribute this module reads or swaps around `send`, as uvicorn
    names them; None otherwise. Another server, or a uvicorn version that renamed any of
    them, gets every write through `send` instead of a failed response."""
    cycle = getattr(send, "__self__", None)
    if (
        _UVICORN_CYCLE is not None
        and type(cycle) is _UVICORN_CYCLE
        and hasattr(cycle, "disconnected")
        and hasattr(cycle, "transport")
        and hasattr(cycle, "keep_alive")
        and hasattr(getattr(cycle, "flow", None), "write_paused")
    ):
        return cycle
    return None


class _HeldWrites(list[bytes]):
    """Stands in for a transport while uvicorn's `send` writes an answer: keeps what it
    writes, for one write afterwards."""

    write = list.append


_UNKNOWN = object()
_JSON = b"application/json"
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
_SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
# Request headers a client may send on to the provider with its own meaning.
_FORWARDED_REQUEST_HEADERS = ("openai-organization", "openai-project", "openai-beta")
_forwarded: tuple[str, ...] | None = None


def _forwarded_request_headers() -> tuple[str, ...]:
    global _forwarded
    if _forwarded is None:
        extra = tuple(h.lower() for h in settings.PROXY_FORWARD_HEADERS)
        _forwarded = _FORWARDED_REQUEST_HEADERS + extra
    return _forwarded


class ClientGone(Exception):
    """The client hung up before its request body arrived."""


def usd(micros: int) -> bytes:
    sign = "-" if micros < 0 else ""
    m = abs(micros)
    return f"{sign}{m // 1_000_000}.{m % 1_000_000:06d}".encode()


# Background tasks must be referenced until done, or the loop may drop them mid-way.
_background: set[asyncio.Task[Any]] = set()


def _start[T](coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Start `coro` as a task that runs to completion even if the request task is
    cancelled (a client hang-up).

    The task starts eagerly: it runs at once up to its first real wait (the ledger's
    write goes out now, not a loop iteration later), and one that never waits is done
    without being scheduled at all."""
    task = asyncio.eager_task_factory(asyncio.get_running_loop(), coro)
    if not task.done():
        _background.add(task)
        task.add_done_callback(_background.discard)
    return task


async def _outcome[T](task: asyncio.Task[T]) -> T:
    """The result of a task from `_start`; cancelling the waiter leaves the task running."""
    return task.result() if task.done() else await asyncio.shield(task)


async def shielded[T](coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion even if the request task is cancelled (see `_start`)."""
    return await _outcome(_start(coro))


class Exchange:
    """One request and its response, with the budget headers every answer carries."""

    __slots__ = (
        "scope",
        "receive",
        "send",
        "headers",
        "request_id",
        "request_id_str",
        "started",
        "upstream_seconds",
        "cache_status",
        "cost",
        "saved",
        "remaining",
        "max_tokens",
        "refused_scope",
        "status",
        "response_started",
        "account_id",
        "api_key_public_id",
        "endpoint",
        "model",
        "stream",
        "tokens",
        "run_id",
        "upstream_request_id",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.request_id = uuid.uuid4()
        self.request_id_str = str(self.request_id)  # in four places per request: once
        self.started = time.perf_counter()
        self.upstream_seconds: float | None = None
        self.cache_status = "BYPASS"
        self.cost = 0
        self.saved = 0
        self.remaining: Any = _UNKNOWN
        self.max_tokens: int | None = None
        self.refused_scope: str | None = None
        self.status = 0
        self.response_started = False
        # For the request's JSON log line (proxy.reqlog): ids and sizes, never content.
        self.account_id: int | None = None
        self.api_key_public_id: uuid.UUID | None = None
        self.endpoint = ""
        self.model = ""
        self.run_id = ""
        self.upstream_request_id: str | None = None  # the provider's x-request-id
        self.stream = False
        self.tokens: tuple[int, int, int] = (0, 0, 0)

    def latency_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def budget_headers(self) -> list[tuple[bytes, bytes]]:
        out = [
            (b"x-request-id", self.request_id_str.encode()),
            (b"x-budgetllm-cost-usd", usd(self.cost)),
            (b"x-budgetllm-cache", self.cache_status.encode()),
            (b"x-budgetllm-saved-usd", usd(self.saved)),
        ]
        if self.remaining is None:
            out.append((b"x-budgetllm-remaining-usd", b"unlimited"))
        elif self.remaining is not _UNKNOWN:
            out.append((b"x-budgetllm-remaining-usd", usd(self.remaining)))
        if self.max_tokens is not None:
            out.append((b"x-budgetllm-max-tokens", str(self.max_tokens).encode()))
        return out

    async def start(
        self, status: int, content_type: bytes, extra: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        self.status = status
        self.response_started = True
        headers = [(b"content-type", content_type), *self.budget_headers(), *extra]
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def respond(
        self,
        status: int,
        body: bytes,
        *,
        content_type: bytes = _JSON,
        extra: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        extra = [(b"content-length", str(len(body)).encode()), *extra]
        cycle = _uvicorn_cycle(self.send)
        if (
            cycle is None
            or cycle.flow.write_paused
            or cycle.disconnected
            or not cycle.keep_alive
            or getattr(cycle, "response_started", True)
        ):
            await self.start(status, content_type, extra)
            await self.send({"type": "http.response.body", "body": body})
            return
        # uvicorn writes the status line and headers, then the body: two system calls,
        # and two TCP segments the client wakes up for, where one does. Its two sends
        # write into a list here, which goes out in one write. Nothing else can write
        # meanwhile: uvicorn's `send` waits only while writing is paused (ruled out
        # above), and closes the connection only when it is not kept alive (ditto).
        transport = cycle.transport
        held = cycle.transport = _HeldWrites()
        try:
            await self.start(status, content_type, extra)
            await self.send({"type": "http.response.body", "body": body})
        finally:
            cycle.transport = transport
            if held:
                transport.write(b"".join(held))

    def drop_connection(self) -> None:
        """Reset the client's connection, unsent bytes and all.

        ASGI has no message for this. Under uvicorn, `send` is a method of the request's
        cycle, which holds the connection's transport; a server without one closes the
        connection its own way once the app returns. A graceful close would wait for a
        client that reads nothing, and even a plain close leaves the kernel holding the
        unsent bytes for minutes: a reset (SO_LINGER 0) frees them at once."""
        transport = getattr(getattr(self.send, "__self__", None), "transport", None)
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        transport.abort()

    async def respond_error(self, err: ProxyError) -> None:
        extra = [] if err.retryable else [(b"x-should-retry", b"false")]
        if err.headers:
            extra += err.headers
        await self.respond(err.status, err.body(), extra=extra)

    async def read_body(self, limit: int, setting: str = "PROXY_MAX_BODY_BYTES") -> bytes:
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit, setting)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit, setting)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def observe(self) -> None:
        total = time.perf_counter() - self.started
        up = self.upstream_seconds
        metrics.observe_request(
            status=self.status,
            cache=self.cache_status,
            cost_micros=self.cost,
            saved_micros=self.saved,
            upstream_seconds=up,
            overhead_seconds=max(0.0, total - (up or 0.0)),
            refused_scope=self.refused_scope,
        )
        reqlog.log_request(
            request_id=self.request_id_str,
            account_id=self.account_id,
            api_key_id=self.api_key_public_id,
            endpoint=self.endpoint or self.scope.get("path", ""),
            model=self.model,
            status=self.status,
            cache=self.cache_status,
            stream=self.stream,
            input_tokens=self.tokens[0],
            cached_tokens=self.tokens[1],
            output_tokens=self.tokens[2],
            cost_micros=self.cost,
            saved_micros=self.saved,
            upstream_ms=None if up is None else up * 1000,
            overhead_ms=max(0.0, total - (up or 0.0)) * 1000,
            total_ms=total * 1000,
            refused=self.refused_scope,
            run_id=self.run_id,
            upstream_request_id=self.upstream_request_id,
        )


_BODY_LIMIT_HINTS = {
    "PROXY_MAX_BODY_BYTES": "Send images by URL rather than inline to stay under it.",
    "PROXY_MAX_EMBEDDINGS_BODY_BYTES": "Split the inputs over several requests.",
}


def _too_large(limit: int, setting: str) -> ProxyError:
    return ProxyError(
        413,
        f"Request body too large: BudgetLLM accepts at most {limit} bytes per request "
        f"({setting}). {_BODY_LIMIT_HINTS[setting]}",
        code="request_too_large",
        retryable=False,
    )


# --- request checks --------------------------------------------------------------------


RUN_BUDGET_MAX_USD = Decimal(MAX_EXACT) / 1_000_000
MICRO_USD = Decimal("0.000001")


def run_headers(headers: dict[str, str]) -> tuple[str, int | None]:
    run_id = headers.get("x-budgetllm-run-id", "").strip()
    if not run_id.isascii():
        # Header bytes arrive read as Latin-1. curl and most clients send a non-ASCII value
        # as UTF-8, so "agent-é" must not be stored as "agent-Ã©"; a browser's fetch sends
        # Latin-1 itself, which is not valid UTF-8 and keeps its first reading.
        with contextlib.suppress(UnicodeError):
            run_id = run_id.encode("latin-1").decode("utf-8")
    if len(run_id) > 128 or not run_id.isprintable():
        raise bad_request(
            "X-BudgetLLM-Run-Id must be at most 128 printable characters.",
            code="invalid_run_id",
        )
    raw_budget = headers.get("x-budgetllm-run-budget-usd")
    if raw_budget is None:
        return run_id, None
    if not run_id:
        raise bad_request(
            "X-BudgetLLM-Run-Budget-USD applies to a run: send X-BudgetLLM-Run-Id with it.",
            code="invalid_run_budget",
        )
    try:
        amount = Decimal(raw_budget.strip())
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite() or amount < 0:
        raise bad_request(
            f"X-BudgetLLM-Run-Budget-USD must be a non-negative amount in dollars such as "
            f"'0.25', not {raw_budget!r}.",
            code="invalid_run_budget",
        )
    # Rounded down: a run budget may only lower the run's cap. Any amount above what the
    # ledger counts exactly lowers nothing, so it is held there (1e309 must not reach SQL).
    # Floored to whole micro-dollars BEFORE scaling: a product with more digits than the
    # decimal context's 28 would be rounded to nearest first, up to the next micro-dollar.
    held = min(amount, RUN_BUDGET_MAX_USD).quantize(MICRO_USD, rounding=ROUND_FLOOR)
    micros = int(held * 1_000_000)
    return run_id, micros


def ensure_not_paused(key: ResolvedKey) -> None:
    if key.account_paused:
        raise ProxyError(
            403,
            "This account is paused (kill-switch): every request is refused until it is "
            "resumed on the dashboard.",
            type_="account_paused",
            code="account_paused",
            retryable=False,
        )
    if key.key_paused:
        raise ProxyError(
            403,
            f"The BudgetLLM key '{key.api_key_name}' is paused: requests with it are refused "
            "until it is resumed on the keys page.",
            type_="key_paused",
            code="key_paused",
            retryable=False,
        )


def refusal_error(exc: Refused) -> ProxyError:
    status = int(exc.http_status)
    return ProxyError(
        status,
        str(exc),
        envelope=exc.to_openai_error(),
        # Over a cap or paused: retrying cannot help, so tell the SDK not to.
        retryable=status >= 500,
    )


def _may_reason(model: str) -> bool:
    """Models that bill hidden reasoning tokens, which a stream never shows (fine-tuned
    ones too: "ft:o4-mini-2025-04-16:org::id"): the o-series, codex, and every gpt-N from
    gpt-5 on (gpt-6-sol, gpt-6.1-terra…), but not their chat models."""
    name = model.rsplit("/", 1)[-1].lower().removeprefix("ft:")
    if "chat" in name:
        return False
    if name[:1] == "o" and name[1:2].isdigit():
        return True
    if name.startswith("gpt-"):
        major = name[4:].partition("-")[0].partition(".")[0]
        return major.isdigit() and int(major) >= 5
    return name.startswith("codex")


# The fewest output tokens worth sending a request for, when the budget would lower its
# limit: below it the request is refused instead (402). A reasoning model thinks first,
# in output tokens: lowered to a handful, it was sold an answer with no text in it.
MIN_OUTPUT_TOKENS = 16
MIN_REASONING_OUTPUT_TOKENS = 1024


def _min_output_tokens(parsed: ParsedRequest) -> int:
    if parsed.endpoint == EMBEDDINGS:
        return 0
    if not _may_reason(parsed.model):
        return MIN_OUTPUT_TOKENS
    if parsed.endpoint == CHAT:
        effort = parsed.body.get("reasoning_effort")
    else:
        reasoning = parsed.body.get("reasoning")
        effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    # Asked to think little or not at all: a short answer is an answer.
    return MIN_OUTPUT_TOKENS if effort in ("none", "minimal") else MIN_REASONING_OUTPUT_TOKENS


# --- accounting ------------------------------------------------------------------------


def _usage(
    ex: Exchange, parsed: ParsedRequest, run_id: str, tokens: Tokens, cost: int, status: int
) -> UsageData:
    ex.tokens = (tokens.input, tokens.cached, tokens.output)
    return UsageData(
        request_id=ex.request_id,
        endpoint=parsed.endpoint,
        model=parsed.model,
        run_id=run_id,
        input_tokens=tokens.input,
        cached_tokens=tokens.cached,
        output_tokens=tokens.output,
        cost_micros=cost,
        saved_micros=0,
        cache_status=ex.cache_status,
        http_status=status,
        latency_ms=ex.latency_ms(),
    )


async def _settle(admission: Admission, usage: UsageData) -> None:
    await _settled(_start(budget_settle(admission=admission, usage=usage)), usage)


async def _settled(settling: asyncio.Task[None], usage: UsageData) -> None:
    try:
        await _outcome(settling)
    except Exception:
        # The reservation stays and expires; the sweep then charges it in full, so a
        # failed settle can only over-count.
        logger.exception("settle failed for request %s", usage.request_id)


async def _settle_and_send(
    admission: Admission, usage: UsageData, send: Callable[[], Awaitable[None]]
) -> None:
    """Settle, and send the answer (or a stream's last events) so that a request the
    client sends once it has them meets the settled ledger.

    With a ledger that applies a started settle before what reaches it later (Redis),
    the settle's command is written first and the answer goes out while its reply is on
    the way back, saving the answer a round trip. Should the next request still overtake
    the settle (the ledger was reconnecting), it meets the reservation, an upper bound of
    the cost: stricter, never looser. Any other ledger (SQL, in a thread) settles before
    the answer is sent."""
    if not get_ledger().settles_in_order:
        await _settle(admission, usage)
        await send()
        return
    settling = _start(budget_settle(admission=admission, usage=usage))
    try:
        await send()
    finally:
        await _settled(settling, usage)


async def _release(admission: Admission, usage: UsageData | None) -> None:
    try:
        await shielded(budget_release(admission=admission, usage=usage))
    except Exception:
        logger.exception("release failed for reservation %s", admission.reservation_id)


def _remaining_after(admission: Admission, cost: int) -> int | None:
    if admission.remaining_micros is None:
        return None
    return max(0, admission.remaining_micros + admission.reserved_micros - cost)


def _cost(admission: Admission, tokens: Tokens) -> int:
    return cost_micros(
        price=admission.price,
        input_tokens=tokens.input,
        cached_tokens=tokens.cached,
        output_tokens=tokens.output,
        cache_write_tokens=tokens.cache_write,
    )


def _lowered_by_budget(parsed: ParsedRequest, admission: Admission) -> bool:
    """True when the budget cut the answer short of what the request would get otherwise.

    Such an answer is not cached: the same request with more budget deserves the full one.
    (With no limit asked, the ledger writes the model's own ceiling: that is no cut.)"""
    if not admission.clamped:
        return False
    wanted = parsed.requested_output_tokens
    if wanted is None:
        wanted = admission.price.max_output_tokens
    return admission.output_tokens_allowed < wanted


def _upper_bound(parsed: ParsedRequest, admission: Admission) -> Tokens:
    bound = parsed.input_tokens_bound
    # Every input token as written to the prompt cache: the dearer way to bill it.
    return Tokens(bound, 0, admission.output_tokens_allowed * parsed.choices, cache_write=bound)


# --- upstream plumbing -----------------------------------------------------------------


# What a provider's refusal tells the client's SDK about retrying it (how long to wait;
# whether to retry at all). Passed on with a refusal only.
_RETRY_ADVICE = ("retry-after", "retry-after-ms", "x-should-retry")


def _passthrough_headers(
    ex: Exchange, headers: Any, *, refused: bool = False
) -> list[tuple[bytes, bytes]]:
    """The provider's headers a client may read (its rate limits, its request id, and on
    a refusal its advice on retrying), and the request id kept for the request's log line."""
    out = []
    for name, value in headers.items():
        low = name.lower()
        if low.startswith(("openai-", "x-ratelimit-")) or (refused and low in _RETRY_ADVICE):
            out.append((low.encode(), value.encode("latin-1")))
        elif low == "x-request-id":
            ex.upstream_request_id = value
            out.append((b"x-upstream-request-id", value.encode("latin-1")))
    return out


def _upstream_headers(ex: Exchange, secret: str, *, stream: bool) -> list[tuple[str, str]]:
    headers = [
        ("Authorization", f"Bearer {secret}"),
        ("Content-Type", "application/json"),
        ("Accept", "text/event-stream" if stream else "application/json"),
        ("X-Request-Id", ex.request_id_str),
        *reqlog.upstream_headers(ex.request_id_str).items(),
    ]
    for name in _forwarded_request_headers():
        value = ex.headers.get(name)
        if value:
            headers.append((name, value))
    return headers


# An OpenAI key as a provider error may quote it, masked or not ("sk-proj-****…abcd").
_PROVIDER_KEY_TEXT = re.compile(rb"\bsk-[A-Za-z0-9_*.\-]{4,}")


def _as_envelope(payload: bytes, status: int) -> bytes:
    """The provider's error body if it is OpenAI-shaped, else one wrapped in that shape.

    A 401 is about the stored provider key, never the client's bllm_ key: OpenAI's text
    for it ("Incorrect API key provided: sk-proj-***…abcd") quotes part of that key and
    sends the client's SDK to platform.openai.com, so it is replaced by our own. Anything
    else that quotes an sk- key has it cut out."""
    if status == 401:
        return ProxyError(
            401,
            "The provider rejected the OpenAI key connected to this BudgetLLM key (revoked, "
            "or restricted). Replace it on the keys page; your BudgetLLM key is fine. "
            "Nothing was charged.",
            type_="upstream_error",
            code="provider_key_rejected",
        ).body()
    payload = _PROVIDER_KEY_TEXT.sub(b"sk-\xe2\x80\xa6", payload)
    try:
        body = json.loads(payload)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return payload
    except ValueError:
        pass
    text = payload[:300].decode("utf-8", "replace").strip() or "no body"
    return json.dumps(
        error_envelope(
            f"The provider answered HTTP {status}: {text}",
            type_="upstream_error",
            code=f"upstream_{status}",
        )
    ).encode()


def _may_have_been_billed(exc: UpstreamError, *, status: int) -> bool:
    """Whether the provider may have billed a request that failed with `exc`.

    It did not when the request never left: no connection (refused, DNS, TLS, connect
    timeout, no free pooled connection) or one found closed before writing. Once the
    request was written it may have — its 200 answer broke off, the connection dropped
    before any answer (the provider may be generating already), or it went silent past
    the read timeout and keeps generating, and billing, after we stop waiting. Those are
    charged at the reserved bound so the ledger never under-counts.
    """
    known = status or exc.status
    if known:
        # The provider's status arrived: a refusal (4xx/5xx) is not billed even if its
        # body then broke off or could not be decoded; a 200 may have been.
        return known == 200
    return exc.request_sent


def _upstream_failure(exc: UpstreamError, *, charged: bool) -> ProxyError:
    outcome = (
        "It may have billed the request, so it was charged at its reserved upper bound."
        if charged
        else "Nothing was charged."
    )
    if isinstance(exc, ReadTimeout):
        return ProxyError(
            504,
            "The provider did not answer in time (PROXY_UPSTREAM_READ_TIMEOUT_SECONDS). " + outcome,
            type_="upstream_error",
            code="upstream_timeout",
        )
    if charged:
        return ProxyError(
            502,
            f"The provider's answer broke off ({exc}). " + outcome,
            type_="upstream_error",
            code="upstream_incomplete",
        )
    return ProxyError(
        502,
        f"Could not reach the provider ({exc}). " + outcome,
        type_="upstream_error",
        code="upstream_unreachable",
    )


async def _pass_refusal(
    ex: Exchange,
    parsed: ParsedRequest,
    admission: Admission,
    run_id: str,
    status: int,
    payload: bytes,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """The provider refused (a bad parameter, its own rate limit...): its status and error
    go to the client, with its advice on retrying (in `headers`), and nothing is charged."""
    await _release(admission, _usage(ex, parsed, run_id, Tokens(0, 0, 0), 0, status))
    ex.remaining = _remaining_after(admission, 0)
    await ex.respond(status, _as_envelope(payload, status), extra=headers)


async def _account_failed_call(
    ex: Exchange,
    parsed: ParsedRequest,
    admission: Admission,
    run_id: str,
    exc: UpstreamError,
    status: int,
) -> ProxyError:
    """Settle (at the bound) or release a call that failed, and say which to the client."""
    charged = _may_have_been_billed(exc, status=status)
    err = _upstream_failure(exc, charged=charged)
    cost = 0
    if charged:
        tokens = _upper_bound(parsed, admission)
        cost = _cost(admission, tokens)
        await _settle(admission, _usage(ex, parsed, run_id, tokens, cost, err.status))
        ex.cost = cost
    else:
        await _release(admission, _usage(ex, parsed, run_id, Tokens(0, 0, 0), 0, err.status))
    ex.remaining = _remaining_after(admission, cost)
    return err


def _upstream_body(parsed: ParsedRequest, admission: Admission) -> bytes:
    body = parsed.body
    changed = False
    if admission.clamped:
        for field in parsed.output_fields:
            body[field] = admission.output_tokens_allowed
        changed = True
    if parsed.endpoint == CHAT and parsed.stream and not parsed.client_wants_usage:
        # We settle from the usage chunk; it is stripped again before the client sees it.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        changed = True
    if not changed:
        return parsed.raw  # untouched bytes: nothing to re-serialise
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


_decoder = json.JSONDecoder()


def _tokens_from_body(endpoint: str, payload: bytes) -> tuple[Tokens | None, Any]:
    """Usage from a full answer, and the parsed answer (None for embeddings)."""
    if endpoint == EMBEDDINGS:
        # Embeddings answers are mostly floats: read only the trailing usage object
        # instead of parsing megabytes of vectors. No field after it is user-controlled.
        at = payload.rfind(b'"usage"')
        if at < 0:
            return None, None
        start = payload.find(b"{", at)
        try:
            usage, _ = _decoder.raw_decode(payload[start:].decode())
        except ValueError:
            return None, None
        return tokens_from_usage(usage), None
    try:
        body = orjson.loads(payload)  # ~3x the standard library's speed on answers
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    return tokens_from_usage(body.get("usage")), body


# --- the handlers ----------------------------------------------------------------------


async def generation(ex: Exchange, endpoint: str, path: str, *, max_body: int) -> None:
    ex.endpoint = endpoint
    key = await key_authenticate(ex.headers)
    ex.account_id, ex.api_key_public_id = key.account_id, key.api_key_public_id
    if endpoint == EMBEDDINGS and settings.PROXY_MAX_EMBEDDINGS_BODY_BYTES < max_body:
        raw = await ex.read_body(
            settings.PROXY_MAX_EMBEDDINGS_BODY_BYTES, "PROXY_MAX_EMBEDDINGS_BODY_BYTES"
        )
    else:
        raw = await ex.read_body(max_body)
    try:
        parsed = PARSERS[endpoint](raw)
    except ProxyError as err:
        if err.code == "invalid_json":
            _refuse_content_encoding(ex.headers)  # the likelier cause, named
        raise
    ex.model, ex.stream = parsed.model, parsed.stream
    run_id, run_budget = run_headers(ex.headers)
    ex.run_id = run_id
    ensure_not_paused(key)
    flight: Flight | None = None
    mode = cache_mode(ex.headers) if key.cache_ttl_seconds > 0 else OFF
    if mode != OFF:
        # The provider key and every request header passed on to the provider (OpenAI's
        # organization, project and beta headers, PROXY_FORWARD_HEADERS) may change the answer.
        headers = ex.headers
        upstream = (
            key.provider_key_id,
            *[headers.get(name, "") for name in _forwarded_request_headers()],
        )
        digest = cache_digest(endpoint=endpoint, body=parsed.body, upstream=upstream)
        cache_down = False
        got: CacheEntry | Flight | None = None
        try:
            if mode == REFRESH:
                # Never answered from the cache (status BYPASS); its answer is stored.
                got = cache_refresh_flight(account_id=key.account_id, digest=digest)
            else:
                got = await cache_get_or_lead(
                    account_id=key.account_id, digest=digest, max_age=key.cache_ttl_seconds
                )
        except (RedisError, DatabaseError):
            # The cache's store is down: go on without it. Its Redis is usually the
            # ledger's too, which then refuses with a 503 naming it (not a bare 500);
            # with a ledger elsewhere the request is served, uncached.
            logger.warning("cache unreachable; request %s bypasses it", ex.request_id_str)
            cache_down = True
        if isinstance(got, CacheEntry):
            await serve_hit(ex, key, parsed, got, run_id, run_budget)
            return
        if not cache_down:
            flight = got
            if mode != REFRESH:
                ex.cache_status = "MISS"
    entry: CacheEntry | None = None
    counted = False
    try:
        _in_flight_take(key.account_id)  # a cache hit (above) takes no connection
        counted = True
        entry = await forward(ex, key, parsed, path, run_id, run_budget, cache=flight is not None)
    finally:
        if counted:
            _in_flight_give(key.account_id)
        if flight is not None:
            try:
                await shielded(cache_finish(flight, entry, ttl=key.cache_ttl_seconds))
            except Exception:
                logger.exception("cache write failed")


def _refuse_content_encoding(headers: dict[str, str]) -> None:
    """A compressed body reads as malformed JSON, and its error ("can't decode byte 0x8b")
    sent the client looking at its JSON: say what is wrong instead."""
    encoding = headers.get("content-encoding", "").strip()
    if encoding and encoding.lower() != "identity":
        raise bad_request(
            f"Content-Encoding '{encoding}' is not supported: send the JSON body uncompressed.",
            code="invalid_json",
        )


# Request fields a Responses answer echoes back that the cache key leaves out (they do
# not change what the model writes), with what the provider echoes when one is not sent.
# A hit carries this request's values, not the original request's: a client that tags
# requests with metadata and reads the tag back must not get another request's tag.
_RESPONSES_ECHOED: dict[str, Any] = {
    "metadata": {},
    "user": None,
    "safety_identifier": None,
    "prompt_cache_key": None,
    "prompt_cache_retention": None,
    "store": True,
}


def _echo_request_fields(full: Any, request: dict[str, Any]) -> Any:
    if not isinstance(full, dict):
        return full
    for name, absent in _RESPONSES_ECHOED.items():
        if name in full:  # only what the provider echoed: add nothing it did not send
            value = request.get(name)
            full[name] = absent if value is None else value
    return full


async def serve_hit(
    ex: Exchange,
    key: ResolvedKey,
    parsed: ParsedRequest,
    entry: CacheEntry,
    run_id: str,
    run_budget: int | None,
) -> None:
    """A cached answer: $0, never blocked by caps, saved = what the original cost."""
    ex.cache_status = "HIT"
    ex.saved = entry.cost_micros
    try:
        # What the caps have left, as on every answer: read, nothing reserved.
        ex.remaining = await budget_remaining(
            AdmitRequest(
                key=key,
                endpoint=parsed.endpoint,
                model=parsed.model,
                input_tokens_bound=0,
                requested_output_tokens=0,
                run_id=run_id,
                run_budget_micros=run_budget,
            )
        )
    except (UnknownModel, Refused):
        pass  # the answer is still served (it spends nothing); the header is left out
    body = entry.body
    full: Any = None
    if parsed.endpoint == RESPONSES:
        full = _echo_request_fields(json.loads(body), parsed.body)
        body = json.dumps(full, separators=(",", ":")).encode()
    if parsed.stream:
        full = full if full is not None else json.loads(body)
        events = (
            chat_replay(full, include_usage=parsed.client_wants_usage)
            if parsed.endpoint == CHAT
            else responses_replay(full)
        )
        await ex.start(200, b"text/event-stream; charset=utf-8", _SSE_HEADERS)
        await ex.send({"type": "http.response.body", "body": b"".join(events)})
    else:
        await ex.respond(200, body)
    usage = UsageData(
        request_id=ex.request_id,
        endpoint=parsed.endpoint,
        model=parsed.model,
        run_id=run_id,
        input_tokens=entry.input_tokens,
        cached_tokens=entry.cached_tokens,
        output_tokens=entry.output_tokens,
        cost_micros=0,
        saved_micros=entry.cost_micros,
        cache_status="HIT",
        http_status=200,
        latency_ms=ex.latency_ms(),
    )
    # Recorded after the answer is sent: a hit's latency is what the cache is for.
    try:
        await shielded(arecord_cache_hit(key=key, usage=usage))
    except Exception:
        logger.exception("recording a cache hit failed")


# Requests of each account (by id) this worker has on their way to the provider.
_in_flight: dict[int, int] = {}


def _in_flight_take(account_id: int) -> None:
    """Count a request against its account's share of this worker's provider connections,
    or refuse it (429) beyond PROXY_MAX_IN_FLIGHT_PER_ACCOUNT.

    The pool (PROXY_UPSTREAM_MAX_CONNECTIONS) is shared by every account: without a
    share, one account's long generations or slowly read streams took every connection,
    and every other account's requests failed with a 502 after the connect timeout."""
    limit = settings.PROXY_MAX_IN_FLIGHT_PER_ACCOUNT
    held = _in_flight.get(account_id, 0)
    if limit > 0 and held >= limit:
        raise ProxyError(
            429,
            f"Too many requests of this account are in progress at once ({limit}, "
            "PROXY_MAX_IN_FLIGHT_PER_ACCOUNT). Nothing was sent to the provider or "
            "charged; retry when some have finished.",
            type_="rate_limit_error",
            code="too_many_in_flight",
        )
    _in_flight[account_id] = held + 1


def _in_flight_give(account_id: int) -> None:
    left = _in_flight[account_id] - 1
    if left:
        _in_flight[account_id] = left
    else:
        del _in_flight[account_id]  # the dict holds only accounts with requests out


async def forward(
    ex: Exchange,
    key: ResolvedKey,
    parsed: ParsedRequest,
    path: str,
    run_id: str,
    run_budget: int | None,
    *,
    cache: bool,
) -> CacheEntry | None:
    if not key.provider_key_ciphertext:
        raise ProxyError(
            400,
            f"The BudgetLLM key '{key.api_key_name}' has no provider key to call with (it was "
            "deleted or disabled). Connect an OpenAI key on the keys page.",
            code="provider_key_missing",
            retryable=False,
        )
    try:
        admission = await budget_admit(
            AdmitRequest(
                key=key,
                endpoint=parsed.endpoint,
                model=parsed.model,
                input_tokens_bound=parsed.input_tokens_bound,
                requested_output_tokens=parsed.requested_output_tokens,
                choices=parsed.choices,
                run_id=run_id,
                run_budget_micros=run_budget,
                min_output_tokens=_min_output_tokens(parsed),
                request_id=ex.request_id,
            )
        )
    except UnknownModel as exc:
        raise ProxyError(400, str(exc), code="model_not_priced", param="model") from None
    except BudgetExceeded as exc:
        ex.refused_scope = str(exc.scope)
        ex.remaining = max(0, exc.limit_micros - exc.spent_micros - exc.reserved_micros)
        raise refusal_error(exc) from None
    except Refused as exc:
        raise refusal_error(exc) from None
    ex.remaining = admission.remaining_micros
    ex.max_tokens = admission.output_tokens_allowed if admission.clamped else None
    try:
        secret = decrypt(key.provider_key_ciphertext)
    except VaultError:
        await _release(admission, None)
        raise ProxyError(
            500,
            "The stored provider key could not be decrypted (the vault keys changed?). "
            "Re-enter the provider key on the keys page.",
            type_="server_error",
            code="provider_key_undecryptable",
            retryable=False,  # every retry fails the same way until the key is re-entered
        ) from None
    try:
        body = _upstream_body(parsed, admission)
    except Exception as exc:
        # Nothing reached the provider: the reservation must not wait for the sweep,
        # which would charge it in full.
        await _release(admission, None)
        if isinstance(exc, UnicodeEncodeError):
            # A lone surrogate escape outside the prompt-bearing fields (say in `user`),
            # met when the body is written again with our output limit in it.
            raise lone_surrogate() from None
        if isinstance(exc, RecursionError):
            raise too_deep() from None
        raise
    headers = _upstream_headers(ex, secret, stream=parsed.stream)
    del secret
    _held.hold(admission)
    try:
        if parsed.stream:
            return await relay_stream(ex, parsed, admission, path, body, headers, run_id, cache)
        return await relay_plain(ex, parsed, admission, path, body, headers, run_id, cache)
    finally:
        _held.drop(admission)


class _HeldReservations:
    """The reservations of this worker's requests on their way, whose deadlines one timer
    pushes on every third of the TTL.

    The sweep charges a reservation past its deadline in full, on the assumption that its
    worker died; a stream can outlive LEDGER_RESERVATION_TTL_SECONDS with its worker well
    (PROXY_UPSTREAM_READ_TIMEOUT_SECONDS bounds silence, not length) and was then charged
    its whole reservation instead of its usage. A worker that dies stops pushing, so a
    crash is still charged in full. One timer for the worker, not one per request: a
    timer made and cancelled per request cost uvloop an extra loop pass each (3.37 -> 3.97
    epoll waits per plain request)."""

    def __init__(self) -> None:
        self.held: dict[str, Admission] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def hold(self, admission: Admission) -> None:
        self.held[admission.reservation_id] = admission
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # the first request on this loop starts the timer
            self.loop = loop
            self._schedule(loop)

    def drop(self, admission: Admission) -> None:
        self.held.pop(admission.reservation_id, None)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        every = max(get_ledger().reservation_ttl_seconds / 3, 0.05)
        loop.call_later(every, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.loop is not loop:
            return  # a newer loop has its own timer
        for admission in list(self.held.values()):
            _start(self._extend(admission))
        self._schedule(loop)

    async def _extend(self, admission: Admission) -> None:
        try:
            await budget_keep_reserved(admission=admission)
        except Exception:
            logger.warning("could not extend reservation %s", admission.reservation_id)


_held = _HeldReservations()


async def relay_plain(
    ex: Exchange,
    parsed: ParsedRequest,
    admission: Admission,
    path: str,
    body: bytes,
    headers: list[tuple[str, str]],
    run_id: str,
    cache: bool,
) -> CacheEntry | None:
    t0 = time.perf_counter()
    status = 0
    try:
        resp = await upstream_pool().request(b"POST", upstream_url(path), headers, body)
        status = resp.status
        passthrough = _passthrough_headers(ex, resp.headers, refused=status != 200)
        payload = await resp.read()
    except UpstreamError as exc:
        ex.upstream_seconds = time.perf_counter() - t0
        status = status or exc.status
        if not status or status == 200:
            raise await _account_failed_call(ex, parsed, admission, run_id, exc, status) from None
        # The provider refused, but its error body broke off or could not be read: its
        # status still goes to the client (as for a stream) and nothing is charged.
        payload = b""
        passthrough = []
    ex.upstream_seconds = time.perf_counter() - t0
    if status != 200:
        await _pass_refusal(ex, parsed, admission, run_id, status, payload, passthrough)
        return None
    tokens, answer = _tokens_from_body(parsed.endpoint, payload)
    reported = tokens is not None
    if tokens is None:
        # No usage in the answer: charge the reserved upper bound rather than guess low.
        tokens = _upper_bound(parsed, admission)
    cost = _cost(admission, tokens)
    ex.cost = cost
    ex.remaining = _remaining_after(admission, cost)
    await _settle_and_send(
        admission,
        _usage(ex, parsed, run_id, tokens, cost, 200),
        lambda: ex.respond(200, payload, extra=passthrough),
    )
    if not cache or not reported or _lowered_by_budget(parsed, admission):
        # Not reported: no usage, so not an answer we can read (an HTML page from a proxy
        # in the way, a cut-off body). Cached, it was replayed for the key's TTL, and
        # every streamed hit on it failed with a 500.
        return None
    if len(payload) > MAX_KEPT_BYTES:
        # The bound a streamed answer is cached within. Unbounded, a batch of embeddings
        # (tens of MB each) was kept for the TTL in the Redis the ledger shares.
        return None
    if parsed.endpoint == RESPONSES and (answer or {}).get("status") != "completed":
        return None
    return CacheEntry(payload, cost, tokens.input, tokens.cached, tokens.output)


def _stream_error_event(parsed: ParsedRequest, message: str, code: str) -> bytes:
    error = {"message": message, "type": "upstream_error", "param": None, "code": code}
    if parsed.endpoint == RESPONSES:
        payload: dict[str, Any] = {
            "type": "error",
            "code": code,
            "message": message,
            "param": None,
            "error": error,
        }
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


class _Resumed:
    """Awaiting this finishes an awaitable that was started by hand and suspended, as a
    task would have: what it waits for is handed to the awaiting task, which resumes it
    (or throws into it, e.g. a cancellation)."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Generator[Any, None, None], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, None, None]:
        waiting = self._waiting
        while True:
            try:
                yield waiting
            except BaseException as exc:
                try:
                    waiting = self._coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                waiting = self._coro.send(None)
            except StopIteration:
                return


class _EventRelay:
    """Takes a stream's body as it arrives (inside the provider connection's callback,
    see `Response.pipe`), cuts it into events, checks each, and sends them on.

    The send is the server's ASGI `send`, run by hand: it finishes at once unless the
    client is not keeping up, and only then is the rest of it left to the request's task
    (`finish_send`). Nothing here may raise into the connection's callback: an error is
    kept for the task to raise."""

    __slots__ = (
        "send",
        "cycle",
        "state",
        "loop",
        "splitter",
        "held",
        "pending",
        "error",
        "blocked_since",
    )

    def __init__(
        self, send: Send, state: ChatStream | ResponsesStream, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.send = send
        self.cycle: Any = None  # see `write_directly`
        self.state = state
        self.loop = loop
        self.splitter = SseSplitter()
        self.held: list[bytes] = []  # the terminal event: it waits for the settle
        self.pending: tuple[Generator[Any, None, None], Any] | None = None
        self.error: Exception | None = None
        self.blocked_since = 0.0  # when a send began waiting for the client; 0.0: none

    def take(self, data: bytes) -> bool:
        """Relay what arrived; False when the task must take over (a send is waiting for
        the client, or something failed)."""
        try:
            state = self.state
            if (
                not state.done  # anything after the final event waits with it
                and data.endswith(b"\n\n")
                and not self.splitter.partial
                and state.take_whole(data)
            ):
                body = data  # whole events, forwarded as they came
            else:
                out = []
                for event in self.splitter.feed(data):
                    forward = state.process(event)
                    if forward is None:
                        continue
                    if state.done:
                        self.held.append(forward)
                    else:
                        out.append(forward)
                if not out:
                    return True
                body = out[0] if len(out) == 1 else b"".join(out)
            cycle = self.cycle
            if cycle is not None and not cycle.flow.write_paused and not cycle.disconnected:
                # What uvicorn's `send` does for a body piece of a chunked response.
                cycle.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
                return True
            message = {"type": "http.response.body", "body": body, "more_body": True}
            sending = self.send(message).__await__()
            try:
                waiting = sending.send(None)
            except StopIteration:
                return True
            self.pending = (sending, waiting)
            self.blocked_since = self.loop.time()
            return False
        except Exception as exc:
            self.error = exc
            return False

    def write_directly(self) -> None:
        """Once the response has started: write events to the client's transport without
        a coroutine each, when the server is uvicorn (httptools, the production setting)
        and the response is chunked.

        The ASGI `send` of an event (a coroutine, run by hand, that frames the piece and
        writes it) was a quarter of relaying it. Whenever uvicorn would make `send` wait
        (the client is not reading: writing is paused) or skip it (the client is gone),
        the event goes through `send` as before; the end of the response always does."""
        cycle = _uvicorn_cycle(self.send)
        if (
            cycle is not None
            and getattr(cycle, "chunked_encoding", None) is True
            and getattr(cycle, "response_started", False)
            and not getattr(cycle, "response_complete", True)
        ):
            self.cycle = cycle

    async def finish_send(self) -> None:
        if self.pending is None:
            return
        sending, waiting = self.pending
        self.pending = None
        try:
            await _Resumed(sending, waiting)
        finally:
            self.blocked_since = 0.0


def unreported_output_tokens(
    estimate: int | None, allowed: int, *, fell_behind: bool, reasons: bool
) -> int:
    """Output tokens to charge a stream that ended without the provider's usage: the
    upward estimate of what was streamed, or all that was allowed where the provider may
    have generated more than the proxy saw. A reasoning model's hidden tokens are never
    in a stream; a relay that fell behind (its client stalled, or it had stopped reading
    the provider for a slow client) left the provider's output since in the buffers
    between them, megabytes it never read."""
    if fell_behind or reasons or estimate is None:
        return allowed
    return min(estimate, allowed)


async def relay_stream(
    ex: Exchange,
    parsed: ParsedRequest,
    admission: Admission,
    path: str,
    body: bytes,
    headers: list[tuple[str, str]],
    run_id: str,
    cache: bool,
) -> CacheEntry | None:
    t0 = time.perf_counter()
    try:
        resp = await upstream_pool().request(b"POST", upstream_url(path), headers, body)
    except UpstreamError as exc:
        ex.upstream_seconds = time.perf_counter() - t0
        raise await _account_failed_call(ex, parsed, admission, run_id, exc, 0) from None
    if resp.status != 200:
        try:
            payload = await resp.read()
        except UpstreamError:
            payload = b""
        ex.upstream_seconds = time.perf_counter() - t0
        passthrough = _passthrough_headers(ex, resp.headers, refused=True)
        await _pass_refusal(ex, parsed, admission, run_id, resp.status, payload, passthrough)
        return None

    state: ChatStream | ResponsesStream = (
        ChatStream(strip_usage=not parsed.client_wants_usage)
        if parsed.endpoint == CHAT
        else ResponsesStream()
    )
    # The stream's headers leave before its cost is known: they carry the reserved upper
    # bound; the settled cost follows in an SSE comment before the final event.
    ex.cost = admission.reserved_micros

    finished = False
    gone = False
    stalled = False
    behind = False  # the client hung up while reading from the provider was paused
    relaying = True
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    send_timeout = settings.PROXY_CLIENT_SEND_TIMEOUT_SECONDS
    relay = _EventRelay(ex.send, state, loop)
    stall_timer: asyncio.TimerHandle | None = None

    def check_send() -> None:
        # One timer per stream, re-armed from the send in progress, not one per send: a
        # stream's every event would otherwise make and cancel a timer.
        nonlocal stall_timer, stalled
        stall_timer = None
        if not relaying:
            return
        now = loop.time()
        sending_since = relay.blocked_since
        if sending_since and now - sending_since >= send_timeout:
            # Connected, but reading nothing: stop the provider, free its connection for
            # other requests, and end the send that waits for this client.
            stalled = True
            resp.close()
            if task is not None:
                task.cancel()
            return
        stall_timer = loop.call_at((sending_since or now) + send_timeout, check_send)

    def on_receive(task: asyncio.Future[dict[str, Any]]) -> None:
        nonlocal gone, behind
        if finished or task.cancelled() or task.exception() is not None:
            return
        if task.result().get("type") == "http.disconnect":
            # Closing the upstream response stops the provider's generation and wakes
            # the relay loop at once, even between two slow events.
            gone = True
            # Asked before the close: with reading paused, what the provider generated
            # since waits unread in the kernel's buffers (megabytes), not in the estimate.
            behind = resp.reading_paused
            resp.close()

    watch: asyncio.Future[dict[str, Any]] | None = None
    splitter = relay.splitter
    held = relay.held
    broken: str | None = None
    settled = False
    # From here on the provider is generating: whatever fails, the finally below stops
    # it (or pools the finished connection) and settles the reservation.
    try:
        await ex.start(
            200,
            resp.headers.get("Content-Type", "text/event-stream").encode("latin-1"),
            [*_SSE_HEADERS, *_passthrough_headers(ex, resp.headers)],
        )
        relay.write_directly()
        watch = asyncio.ensure_future(ex.receive())
        watch.add_done_callback(on_receive)
        if send_timeout > 0:
            stall_timer = loop.call_at(loop.time() + send_timeout, check_send)
        try:
            # Events are relayed from the provider connection's callback as they arrive;
            # this task wakes only when the client falls behind or the stream ends.
            resp.pipe(relay.take)
            while True:
                await resp.piped()
                if relay.pending is not None:
                    try:
                        await relay.finish_send()
                    except asyncio.CancelledError:
                        if not stalled or task is None:
                            raise
                        task.uncancel()
                        break
                    if gone:
                        break
                    resp.pipe(relay.take)
                    continue
                if relay.error is not None:
                    raise relay.error
                chunk = await resp.next_chunk()  # the end: what is left, or the error
                if not chunk:
                    break
                relay.take(chunk)
        except TimeoutError:
            broken = "The provider stopped sending in the middle of the stream (timeout)."
        except UpstreamError as exc:
            if not gone:
                broken = f"The provider's stream broke off ({exc})."
        if state.done:
            # The final event ([DONE], response.completed) had arrived; only the end of
            # the HTTP body did not. The client has the whole answer, settled as such: an
            # error now would make its SDK raise (and a retry pay twice).
            broken = None
        ex.upstream_seconds = time.perf_counter() - t0
        if stalled:
            gone = True
            ex.drop_connection()
        if not gone and broken is None and not state.done:
            broken = "The provider's stream ended before its final event."
        if gone and state.usage is None:
            # What arrived but was never relayed may still carry the provider's usage.
            for event in splitter.feed(resp.leftover()):
                state.process(event)

        tokens = tokens_from_usage(state.usage)
        reported = tokens is not None
        if tokens is None:
            # Hung up, broken, or no usage sent: charge the input bound plus an upward
            # estimate of what was streamed (never $0, never more than was reserved).
            output = unreported_output_tokens(
                state.output_estimate(),
                admission.output_tokens_allowed * parsed.choices,
                fell_behind=stalled or behind,
                reasons=_may_reason(parsed.model),
            )
            # Every input token as written to the prompt cache: the dearer way to bill it.
            bound = parsed.input_tokens_bound
            tokens = Tokens(bound, 0, output, cache_write=bound)
        cost = _cost(admission, tokens)
        # The provider's own failure event already reached the client: recorded as the
        # failure it is (for chat, `state.failed` is known once the estimate read the
        # events, as it does when no usage came, which is how OpenAI fails a stream).
        status = 499 if gone else (502 if broken or state.failed else 200)
        ex.cost = cost
        ex.remaining = _remaining_after(admission, cost)
        tail = [f": budgetllm cost_usd={usd(cost).decode()}\n\n".encode()]
        if broken:
            tail.append(_stream_error_event(parsed, broken, "upstream_stream_broken"))
        tail.extend(held)
        last = {"type": "http.response.body", "body": b"".join(tail), "more_body": False}

        async def send_last() -> None:
            nonlocal finished
            finished = True  # a hang-up from here on no longer changes the outcome
            if stalled:
                return
            relay.blocked_since = loop.time()
            try:
                await ex.send(last)
            except asyncio.CancelledError:
                if not stalled or task is None:
                    raise
                task.uncancel()  # settled in full already: only the last bytes are lost
                ex.drop_connection()

        settled = True
        await _settle_and_send(
            admission, _usage(ex, parsed, run_id, tokens, cost, status), send_last
        )
    finally:
        finished = True
        relaying = False
        if stall_timer is not None:
            stall_timer.cancel()
        if watch is not None and not watch.done():
            watch.cancel()
        if state.done and not gone and broken is None:
            resp.release()  # read to the end: the connection goes back to the pool
        else:
            resp.close()  # stops the provider's generation; the connection is dropped
        if not settled:
            # An unexpected error in the relay: charge the whole reservation.
            await _settle(
                admission,
                _usage(
                    ex,
                    parsed,
                    run_id,
                    _upper_bound(parsed, admission),
                    admission.reserved_micros,
                    500,
                ),
            )
    if gone:
        ex.status = 499
    if not cache or _lowered_by_budget(parsed, admission) or gone or broken or not reported:
        # Not reported: charged an upward estimate, not the provider's usage. Cached, every
        # hit recorded that estimate as saved and a plain hit answered "usage": null.
        return None
    if isinstance(state, ResponsesStream):
        if not state.completed or state.response is None:
            return None
        full = state.response
    else:
        if state.overflow:
            return None
        chunks = state.chunks()
        if not chunks or state.failed:  # a provider error mid-way: a half answer
            return None
        full = chat_assemble(chunks, state.usage)
    return CacheEntry(
        json.dumps(full, separators=(",", ":")).encode(),
        cost,
        tokens.input,
        tokens.cached,
        tokens.output,
    )


async def models(ex: Exchange, path: str) -> None:
    key = await key_authenticate(ex.headers)
    ensure_not_paused(key)
    if not key.provider_key_ciphertext:
        raise ProxyError(
            400,
            f"The BudgetLLM key '{key.api_key_name}' has no provider key to call with.",
            code="provider_key_missing",
            retryable=False,
        )
    try:
        secret = decrypt(key.provider_key_ciphertext)
    except VaultError:
        raise ProxyError(
            500,
            "The stored provider key could not be decrypted.",
            type_="server_error",
            code="provider_key_undecryptable",
            retryable=False,  # as for a generation: retrying cannot fix it
        ) from None
    headers = [h for h in _upstream_headers(ex, secret, stream=False) if h[0] != "Content-Type"]
    t0 = time.perf_counter()
    try:
        resp = await upstream_pool().request(b"GET", upstream_url(path), headers)
        status = resp.status
        passthrough = _passthrough_headers(ex, resp.headers, refused=status != 200)
        payload = await resp.read()
    except UpstreamError as exc:
        raise _upstream_failure(exc, charged=False) from None  # listing models is free
    finally:
        ex.upstream_seconds = time.perf_counter() - t0
    if status != 200:
        payload = _as_envelope(payload, status)
    await ex.respond(status, payload, extra=passthrough)
