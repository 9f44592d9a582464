"""The one HTTP/1.1 client to the provider: pooled keep-alive connections, one pool per loop.

Why not aiohttp or httpx: on the hot path a general client's machinery (request and
response objects, header multidicts, payload registries, cookie and redirect handling)
cost ~0.25 ms of CPU per request, a fifth of the proxy's whole budget, for features a
proxy to one API never uses. This is the part of HTTP that path needs, on uvloop's
transports and the `httptools` parser uvicorn already uses:

- one `write` per request (request line, headers and body together);
- keep-alive connections reused last-in-first-out, at most
  `PROXY_UPSTREAM_MAX_CONNECTIONS` per worker (callers wait for a free one beyond that),
  idle ones dropped after `KEEPALIVE_SECONDS`;
- `PROXY_UPSTREAM_CONNECT_TIMEOUT_SECONDS` bounds connecting (DNS, TCP, TLS) and
  `PROXY_UPSTREAM_READ_TIMEOUT_SECONDS` bounds the silence between two reads: a long
  generation is legitimate, a stalled provider is not;
- TLS with the system's trust store and hostname checks, for https:// upstreams;
- bodies read whole or chunk by chunk (streams), with back-pressure: reading pauses
  while more than `MAX_BUFFERED` bytes wait for a slow client;
- `Accept-Encoding: identity` is sent, and a gzip/deflate answer is decoded anyway.

A request is never retried: the provider may already be generating (and billing) it.
The errors say what the ledger needs to know — whether the request can have reached the
provider (`ConnectFailed` means it cannot).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
from django.conf import settings

KEEPALIVE_SECONDS = 30.0  # below the idle timeouts providers' load balancers use
MAX_BUFFERED = 256 * 1024


class UpstreamError(Exception):
    """The provider could not be reached, or its answer broke off.

    `request_sent` is False only when the request certainly never left (the ledger then
    charges nothing); `status` is the provider's status when its headers had arrived."""

    def __init__(self, message: str, *, request_sent: bool = True, status: int = 0) -> None:
        super().__init__(message)
        self.request_sent = request_sent
        self.status = status


class ConnectFailed(UpstreamError):
    """No connection was made (DNS, refused, TLS, no free one): the request never left."""

    def __init__(self, message: str) -> None:
        super().__init__(message, request_sent=False)


class ConnectTimeout(ConnectFailed, TimeoutError):
    """Connecting took longer than the connect timeout: the request never left."""


class ReadTimeout(UpstreamError, TimeoutError):
    """The provider went silent for longer than the read timeout after taking the request."""


class Disconnected(UpstreamError, ConnectionError):
    """The connection closed before the answer was complete."""


class BadResponse(UpstreamError):
    """The provider's bytes were not valid HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes: the origin (for the pool) and the request line's path."""

    scheme: str
    host: str
    port: int
    path: bytes
    host_header: bytes


_targets: dict[tuple[str, str], Target] = {}


def upstream_url(path: str) -> Target:
    """`path` is what follows /v1, e.g. "/chat/completions" (parsed once, not per request)."""
    base = str(settings.OPENAI_UPSTREAM_BASE_URL)
    target = _targets.get((base, path))
    if target is None:
        if len(_targets) > 1000:  # /v1/models/{id} paths vary: keep the memo bounded
            _targets.clear()
        url = urlsplit(base.rstrip("/") + path)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"OPENAI_UPSTREAM_BASE_URL must be an http(s) URL, not {base!r}")
        default_port = 443 if url.scheme == "https" else 80
        port = url.port or default_port
        host = url.hostname
        shown = f"[{host}]" if ":" in host else host
        target = _targets[(base, path)] = Target(
            scheme=url.scheme,
            host=host,
            port=port,
            path=(url.path or "/").encode() + (b"?" + url.query.encode() if url.query else b""),
            host_header=(shown if port == default_port else f"{shown}:{port}").encode("idna"),
        )
    return target


class Headers:
    """A response's headers: names lower-cased, looked up without regard to case."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def get(self, name: str, default: str = "") -> str:
        name = name.lower()
        for key, value in self._items:
            if key == name:
                return value
        return default

    def items(self) -> list[tuple[str, str]]:
        return self._items


class _Connection(asyncio.Protocol):
    """One keep-alive connection: writes a request, parses the answer as it arrives."""

    def __init__(self, pool: Pool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.counted = True  # still counted in the pool's open connections
        self.idle_since = 0.0
        self.last_read = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False
        self.closed = False
        self.busy = False  # between writing a request and handing the connection back
        # Takes each piece of the body as llhttp yields it (see Response.pipe).
        self.sink: Callable[[bytes], bool] | None = None
        self._reset()

    def _reset(self) -> None:
        self.sink = None
        self.status = 0
        self.header_items: list[tuple[str, str]] = []
        self.headers_done = False
        self.complete = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.error: UpstreamError | None = None
        self._reads_until_close = False
        self.keep_alive = False

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self.close()  # bytes nobody asked for: this connection cannot be trusted again
            return
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"the provider's answer is not valid HTTP ({exc})"))
            self.close()
            return
        if self.buffered > MAX_BUFFERED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        if self.sink is None or self.complete or self.error is not None:
            self._wake()

    def eof_received(self) -> bool:
        # An answer with neither a length nor chunked encoding ends when the connection
        # does; llhttp cannot know, so the end is decided here.
        if self.headers_done and not self.complete and self._reads_until_close:
            self.complete = True
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            reason = f" ({exc})" if exc else ""
            self._fail(Disconnected(f"the provider closed the connection{reason}"))
        self.pool._forget(self)
        self._wake()

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer nobody asked for is never part of this one
            self._fail(BadResponse("the provider sent bytes after its answer"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return
        self.header_items.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        self.status = self.parser.get_status_code()
        if self.status < 200:
            self.header_items = []  # an interim answer (103 Early Hints): the real one follows
            return
        self.headers_done = True
        # Asked now: llhttp forgets it once the message is complete.
        self.keep_alive = self.parser.should_keep_alive()
        names = {name for name, _ in self.header_items}
        self._reads_until_close = "content-length" not in names and not any(
            name == "transfer-encoding" and "chunked" in value.lower()
            for name, value in self.header_items
        )

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        sink = self.sink
        if sink is not None:
            if not sink(body):
                self.sink = None  # later pieces wait in the buffer; data_received wakes
            return
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.complete = True

    # --- used by Response

    def _fail(self, exc: UpstreamError) -> None:
        if self.error is None:
            self.error = exc

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_timer(self) -> None:
        # One timer per connection, re-armed from the last read, not one per wait: a
        # stream's every event would otherwise make and cancel a timer.
        self.timer = None
        if self.waiter is None or self.closed:
            return  # nobody is waiting: the next wait arms it again
        deadline = self.last_read + self.pool.read_timeout
        if self.loop.time() < deadline:
            self.timer = self.loop.call_at(deadline, self._on_timer)
            return
        self._fail(ReadTimeout(f"no data from the provider for {self.pool.read_timeout:g} s"))
        self.close()
        self._wake()

    async def wait(self) -> None:
        """Until more of the answer (or an error) arrives, at most the read timeout."""
        waiter = self.waiter = self.loop.create_future()
        if self.timer is None:
            self.timer = self.loop.call_at(self.last_read + self.pool.read_timeout, self._on_timer)
        try:
            await waiter
        finally:
            self.waiter = None

    def take_body(self) -> bytes:
        chunks = self.body
        self.body = []
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def reusable(self) -> bool:
        return (
            self.complete
            and self.error is None
            and not self.closed
            and self.keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()  # no orderly goodbye: stop the provider at once
        self.pool._forget(self)


class Response:
    """The provider's answer. Read it whole with `read()` or in pieces with `next_chunk()`;
    then `release()` (keeps the connection if the answer was read to its end) or `close()`."""

    __slots__ = ("_conn", "status", "headers", "_decoder", "_released", "_sink", "_fed")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = conn.status
        self.headers = Headers(conn.header_items)
        self._released = False
        self._decoder: Any = None
        self._fed = False  # compressed bytes arrived (an empty body is no stream at all)
        self._sink: Callable[[bytes], bool] | None = None
        encoding = (self.headers.get("content-encoding") or "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(47)  # wbits 47: gzip or zlib framing
        elif encoding != "identity":
            self.close()
            raise BadResponse(
                f"the provider answered in an unsupported encoding {encoding!r}",
                status=self.status,
            )

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        conn = self._conn
        parts: list[bytes] = []
        try:
            while True:
                if conn.buffered:
                    # Taken as it comes: a body beyond MAX_BUFFERED pauses reading until
                    # what was buffered is taken.
                    parts.append(conn.take_body())
                if conn.complete:
                    break
                if conn.error is not None:
                    raise conn.error
                await conn.wait()
            body = self._decode(b"".join(parts), final=True)
        except BaseException:
            self.close()
            raise
        self.release()
        return body

    async def next_chunk(self) -> bytes:
        """The next piece of the body; b"" at its end, or once `close()` was called."""
        conn = self._conn
        try:
            while True:
                if self._released:
                    return b""
                if conn.buffered:
                    out = self._decode(conn.take_body(), final=False)
                    if out:
                        return out
                    continue  # compressed bytes that decode to nothing yet: not the end
                if conn.complete:
                    return self._decode(b"", final=True) if self._decoder else b""
                if conn.error is not None:
                    raise conn.error
                await conn.wait()
        except BaseException:
            self.close()
            raise

    def pipe(self, sink: Callable[[bytes], bool]) -> None:
        """Hand the body to `sink` piece by piece as it arrives, inside the connection's
        own callback, starting with what is buffered now.

        A relay that awaits each piece wakes its task for every piece (a future, a
        scheduled callback, a chain of coroutine frames), and a stream's events arrive
        one by one. `sink` returns False when it takes no more for now (its client is not
        keeping up, or it failed): the pipe stops, `piped()` returns, and later pieces
        wait in the buffer (reading pauses beyond `MAX_BUFFERED`) until `pipe` is called
        again."""
        conn = self._conn
        if self._released:
            return
        self._sink = sink
        if conn.buffered and not self._decoded(conn.take_body()):
            conn._wake()
            return
        # Uncompressed, each piece goes from llhttp's callback straight to the sink.
        conn.sink = sink if self._decoder is None else self._decoded

    def _decoded(self, body: bytes) -> bool:
        try:
            data = self._decode(body, final=False)
        except BadResponse as exc:
            self._conn._fail(exc)
            return False
        sink = self._sink
        return not data or sink is None or sink(data)

    async def piped(self) -> None:
        """Wait while the pipe runs: until the sink stops it, or the body ends, fails or is
        closed (then `next_chunk()` gives what is left, or raises the error)."""
        conn = self._conn
        while conn.sink is not None:
            if conn.complete or conn.error is not None or self._released:
                conn.sink = None
                return
            await conn.wait()

    @property
    def reading_paused(self) -> bool:
        """Whether reading from the provider is paused (a slow consumer left more than
        `MAX_BUFFERED` waiting): what it sent since waits in the kernel, unseen."""
        return self._conn.paused

    def leftover(self) -> bytes:
        """After `close()`: what had arrived but was never taken (for a stream, events the
        client never got, still worth reading for the usage they may carry)."""
        conn = self._conn
        chunks, conn.body, conn.buffered = conn.body, [], 0
        try:
            return self._decode(b"".join(chunks), final=False)
        except BadResponse:
            return b""

    def _decode(self, data: bytes, *, final: bool) -> bytes:
        if self._decoder is None:
            return data
        if data:
            self._fed = True
        try:
            out = self._decoder.decompress(data)
            if not final:
                return out
            out += self._decoder.flush()
        except zlib.error as exc:
            raise BadResponse(f"the provider's compressed answer is corrupt ({exc})") from None
        # zlib takes a stream that stops short for one still on its way: a body whose
        # HTTP framing is complete but whose gzip/zlib stream is not is a cut-off answer,
        # not a shorter one (checked once, at the end, never per piece).
        if self._fed and not self._decoder.eof:
            raise BadResponse("the provider's compressed answer ends before its stream does")
        return out

    def release(self) -> None:
        """Done with the answer: one read to its end leaves its connection to the next request."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        conn.sink = None
        if conn.reusable() and not conn.buffered:
            conn.pool._put(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Stop reading and drop the connection: a generation in progress stops."""
        if self._released:
            return  # released: the connection may be serving another request by now
        self._released = True
        conn = self._conn
        conn.sink = None
        conn._fail(Disconnected("closed by BudgetLLM"))
        conn.close()
        conn._wake()


class Pool:
    """Keep-alive connections for one event loop, per origin."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self.loop = loop
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.open = 0
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._ssl: ssl.SSLContext | None = None
        self.closed = False

    async def request(
        self, method: bytes, target: Target, headers: list[tuple[str, str]], body: bytes = b""
    ) -> Response:
        """Send one request and wait for the answer's status and headers."""
        head = [method, b" ", target.path, b" HTTP/1.1\r\nHost: ", target.host_header]
        for name, value in headers:
            if "\r" in value or "\n" in value or "\0" in value:
                raise ValueError(f"header {name} holds a line break")
            head.append(f"\r\n{name}: {value}".encode("latin-1"))
        if body or method == b"POST":
            head.append(b"\r\nContent-Length: %d" % len(body))
        head.append(b"\r\nAccept-Encoding: identity\r\n\r\n")
        head.append(body)
        request = b"".join(head)

        conn = await self._acquire(target)
        try:
            conn._reset()
            conn.busy = True
            conn.last_read = self.loop.time()
            if conn.transport is None or conn.transport.is_closing():
                raise Disconnected("the connection to the provider closed", request_sent=False)
            conn.transport.write(request)
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait()
        except BaseException:
            conn.close()
            raise
        return Response(conn)

    async def _acquire(self, target: Target) -> _Connection:
        key = (target.scheme, target.host, target.port)
        while True:
            idle = self._idle.get(key)
            now = self.loop.time()
            while idle:
                conn = idle.pop()  # the most recently used: least likely to be stale
                if now - conn.idle_since < KEEPALIVE_SECONDS and conn.reusable():
                    return conn
                conn.close()
            if self.open < self.max_connections:
                return await self._connect(target, key)
            waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    handed = await waiter
            except BaseException as exc:
                # Cancelled just after being handed a connection (or room for one): pass
                # it on rather than lose it. The deadline counts too: a connection handed
                # over in the same loop iteration as the timeout fires arrives as a
                # TimeoutError, and was kept out of the pool (counted, never idle) until
                # the provider closed it.
                if waiter.done() and not waiter.cancelled():
                    passed = waiter.result()
                    if passed is not None:
                        self._put(passed)
                    else:
                        self._wake_one(None)
                if isinstance(exc, TimeoutError):
                    raise ConnectTimeout(
                        f"all {self.max_connections} connections to the provider stayed busy "
                        f"for {self.connect_timeout:g} s (PROXY_UPSTREAM_MAX_CONNECTIONS)"
                    ) from None
                raise
            if handed is not None:
                if handed.key == key and handed.reusable():
                    return handed
                handed.close()

    async def _connect(self, target: Target, key: tuple[str, str, int]) -> _Connection:
        self.open += 1
        conn = _Connection(self, key)
        tls = target.scheme == "https"
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self.loop.create_connection(
                    lambda: conn,
                    target.host,
                    target.port,
                    ssl=self._ssl_context() if tls else None,
                    server_hostname=target.host if tls else None,
                )
        except TimeoutError:
            conn.close()
            raise ConnectTimeout(
                f"no connection to {target.host}:{target.port} within {self.connect_timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            conn.close()
            raise ConnectFailed(f"cannot connect to {target.host}:{target.port} ({exc})") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _wake_one(self, conn: _Connection | None) -> bool:
        """Hand `conn` (or, with None, room for a new connection) to the first waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _put(self, conn: _Connection) -> None:
        conn.busy = False
        if self._wake_one(conn):
            return
        if self.closed:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self._idle.setdefault(conn.key, []).append(conn)

    def _forget(self, conn: _Connection) -> None:
        """`conn` is closed: it no longer counts, and a waiter may open a new one."""
        if not conn.counted:
            return
        conn.counted = False
        self.open -= 1
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        self._wake_one(None)

    def close(self) -> None:
        self.closed = True
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn.close()
        self._idle.clear()


_pools: dict[asyncio.AbstractEventLoop, Pool] = {}


def upstream_pool() -> Pool:
    """This event loop's pool, made on first use (it must be made inside the loop)."""
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None or pool.closed:
        pool = _pools[loop] = Pool(
            loop,
            max_connections=settings.PROXY_UPSTREAM_MAX_CONNECTIONS,
            connect_timeout=settings.PROXY_UPSTREAM_CONNECT_TIMEOUT_SECONDS,
            read_timeout=settings.PROXY_UPSTREAM_READ_TIMEOUT_SECONDS,
        )
    return pool


async def upstream_close() -> None:
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        pool.close()
