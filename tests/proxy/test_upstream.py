"""The provider client (proxy.upstream) against small scripted HTTP servers.

Each test runs on both uvloop (what production uses) and asyncio's own loop. The servers
speak raw bytes so that every framing the provider may use is exercised exactly:
Content-Length, chunked, read-until-close, gzip, an early close, silence, TLS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import ipaddress
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.upstream import (
    MAX_BUFFERED,
    BadResponse,
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    Pool,
    ReadTimeout,
    Target,
)

Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        def in_own_loop() -> Any:
            with asyncio.Runner(loop_factory=factory) as r:
                return r.run(coro)

        # A thread of its own: the browser tests' Playwright keeps a loop running in the
        # main thread for the whole session.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(in_own_loop).result()

    return runner


class Server:
    """Answers each request on a connection with `handler`; counts connections."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    def target(self, path: str = "/v1/chat/completions", host: str = "127.0.0.1") -> Target:
        scheme = "https" if self.ssl_context else "http"
        return Target(scheme, host, self.port, path.encode(), f"{host}:{self.port}".encode())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                await self.handler(request, reader, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def answer(body: bytes, *extra: bytes) -> Handler:
    async def handler(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"".join(
            h + b"\r\n" for h in extra
        )
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    return handler


def after(seconds: float) -> Handler:
    """Answers "ok", `seconds` after the request."""

    async def handler(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(seconds)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    return handler


def then_close(raw: bytes) -> Handler:
    """Writes `raw` and closes the connection."""

    async def handler(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        writer.close()

    return handler


def pool(**overrides: Any) -> Pool:
    options = {"max_connections": 8, "connect_timeout": 2.0, "read_timeout": 2.0, **overrides}
    return Pool(asyncio.get_running_loop(), **options)


def test_requests_reuse_one_keep_alive_connection(run: Any) -> None:
    async def main() -> None:
        async with Server(answer(b'{"ok":1}', b"X-Ratelimit-Remaining: 9")) as server:
            p = pool()
            for _ in range(3):
                resp = await p.request(b"POST", server.target(), [("A", "b")], b'{"q":1}')
                assert (resp.status, await resp.read()) == (200, b'{"ok":1}')
                assert resp.headers.get("X-RateLimit-Remaining") == "9"
            assert server.connections == 1
            assert p.open == 1
            first = server.requests[0]
            assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
            assert b"\r\nHost: 127.0.0.1:%d\r\n" % server.port in first
            assert b"\r\nContent-Length: 7\r\n" in first and first.endswith(b'\r\n\r\n{"q":1}')
            assert b"\r\nAccept-Encoding: identity\r\n" in first
            p.close()

    run(main())


def test_chunked_and_read_until_close_answers_are_read_whole(run: Any) -> None:
    async def chunked(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b'{"a":', b'"long"', b"}"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")

    until_close = then_close(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")

    async def main() -> None:
        async with Server(chunked) as server:
            p = pool()
            resp = await p.request(b"POST", server.target(), [], b"{}")
            assert await resp.read() == b'{"a":"long"}'
            resp = await p.request(b"POST", server.target(), [], b"{}")
            assert await resp.read() == b'{"a":"long"}'
            assert server.connections == 1
        async with Server(until_close) as server:
            p = pool()
            resp = await p.request(b"GET", server.target("/v1/models"), [])
            assert await resp.read() == b"all of it"
            assert p.open == 0  # "Connection: close" is honoured: nothing is pooled

    run(main())


def test_a_stream_arrives_piece_by_piece_and_its_connection_is_reused(run: Any) -> None:
    async def sse(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        for i in range(3):
            event = b"data: %d\n\n" % i
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")

    async def main() -> None:
        async with Server(sse) as server:
            p = pool()
            for _ in range(2):
                resp = await p.request(b"POST", server.target(), [], b"{}")
                pieces = []
                while chunk := await resp.next_chunk():
                    pieces.append(chunk)
                resp.release()
                assert b"".join(pieces) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
                assert len(pieces) >= 2, "the stream was buffered, not relayed"
            assert server.connections == 1

    run(main())


def test_a_slow_reader_pauses_the_provider_instead_of_buffering_without_bound(run: Any) -> None:
    big = b"x" * (4 * 1024 * 1024)

    async def main() -> None:
        async with Server(answer(big)) as server:
            resp = await pool().request(b"POST", server.target(), [], b"{}")
            await asyncio.sleep(0.3)  # the client is slow; the provider keeps sending
            conn = resp._conn
            assert conn.paused
            assert conn.buffered < MAX_BUFFERED + 512 * 1024
            received = bytearray()
            while chunk := await resp.next_chunk():
                received += chunk
            assert bytes(received) == big

    run(main())


def test_a_gzip_answer_is_decoded(run: Any) -> None:
    async def main() -> None:
        body = gzip.compress(b'{"usage":{"prompt_tokens":3}}')
        async with Server(answer(body, b"Content-Encoding: gzip")) as server:
            resp = await pool().request(b"POST", server.target(), [], b"{}")
            assert await resp.read() == b'{"usage":{"prompt_tokens":3}}'

    run(main())


def test_silence_past_the_read_timeout_is_a_read_timeout(run: Any) -> None:
    async def silent(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
        await asyncio.sleep(5)

    async def main() -> None:
        async with Server(silent) as server:
            p = pool(read_timeout=0.2)
            resp = await p.request(b"POST", server.target(), [], b"{}")
            assert resp.status == 200
            with pytest.raises(ReadTimeout) as caught:
                await resp.read()
            assert isinstance(caught.value, TimeoutError)
            assert p.open == 0  # the connection is dropped, not pooled

    run(main())


def test_the_read_timeout_bounds_silence_not_the_length_of_a_stream(run: Any) -> None:
    async def trickle(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):
            await asyncio.sleep(0.1)
            writer.write(b"5\r\ntick\n\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    async def main() -> None:
        async with Server(trickle) as server:
            # 0.6 s of stream, never more than 0.1 s of silence, a 0.25 s read timeout.
            resp = await pool(read_timeout=0.25).request(b"POST", server.target(), [], b"{}")
            body = b""
            while chunk := await resp.next_chunk():
                body += chunk
            assert body == b"tick\n" * 6

    run(main())


def test_an_answer_cut_off_mid_body_is_disconnected(run: Any) -> None:
    cut = then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")

    async def main() -> None:
        async with Server(cut) as server:
            p = pool()
            resp = await p.request(b"POST", server.target(), [], b"{}")
            with pytest.raises(Disconnected):
                await resp.read()
            assert p.open == 0

    run(main())


def test_nothing_listening_is_connect_failed_and_not_counted(run: Any) -> None:
    async def main() -> None:
        async with Server(answer(b"")) as server:
            target = server.target()
        p = pool()
        with pytest.raises(ConnectFailed):
            await p.request(b"POST", target, [], b"{}")
        assert p.open == 0

    run(main())


def test_garbage_instead_of_http_is_a_bad_response(run: Any) -> None:
    async def garbage(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    async def main() -> None:
        async with Server(garbage) as server:
            with pytest.raises(BadResponse):
                await pool().request(b"POST", server.target(), [], b"{}")

    run(main())


def test_beyond_max_connections_requests_wait_for_a_free_one(run: Any) -> None:
    async def main() -> None:
        async with Server(after(0.05)) as server:
            p = pool(max_connections=2)

            async def one() -> bytes:
                resp = await p.request(b"POST", server.target(), [], b"{}")
                return await resp.read()

            assert await asyncio.gather(*(one() for _ in range(6))) == [b"ok"] * 6
            assert server.connections == 2

    run(main())


def test_a_cancelled_request_drops_its_connection_and_frees_its_place(run: Any) -> None:
    async def never(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def main() -> None:
        async with Server(never) as server:
            p = pool(max_connections=1)
            task = asyncio.ensure_future(p.request(b"POST", server.target(), [], b"{}"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert p.open == 0

    run(main())


def test_an_idle_connection_the_server_closed_is_replaced(run: Any) -> None:
    # The server's idle timeout strikes right after its answer.
    once = then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async def main() -> None:
        async with Server(once) as server:
            p = pool()
            for _ in range(2):
                resp = await p.request(b"POST", server.target(), [], b"{}")
                assert await resp.read() == b"ok"
                await asyncio.sleep(0.05)
            assert server.connections == 2

    run(main())


def test_a_header_value_with_a_line_break_is_refused_before_sending(run: Any) -> None:
    async def main() -> None:
        async with Server(answer(b"")) as server:
            with pytest.raises(ValueError, match="line break"):
                await pool().request(b"POST", server.target(), [("X", "a\r\nEvil: 1")], b"{}")
            assert server.connections == 0

    run(main())


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_is_verified_against_the_trust_store_and_the_host_name(
    run: Any, tmp_path: Path
) -> None:
    cert, key = _certificate(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def main() -> None:
        async with Server(answer(b"secure"), ssl_context=server_ctx) as server:
            # The system trust store does not know this certificate: refused.
            with pytest.raises(ConnectFailed):
                await pool().request(b"POST", server.target(host="localhost"), [], b"{}")
            trusting = pool()
            trusting._ssl = ssl.create_default_context(cafile=str(cert))
            resp = await trusting.request(b"POST", server.target(host="localhost"), [], b"{}")
            assert await resp.read() == b"secure"
            # Trusted certificate, wrong name: refused as well.
            wrong_name = Target("https", "127.0.0.2", server.port, b"/v1/x", b"127.0.0.2")
            other = pool()
            other._ssl = ssl.create_default_context(cafile=str(cert))
            with pytest.raises(ConnectFailed):
                await other.request(b"POST", wrong_name, [], b"{}")

    run(main())


def test_a_tls_handshake_that_never_finishes_is_a_connect_timeout(run: Any) -> None:
    async def main() -> None:
        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)  # accepts TCP, never answers the TLS hello

        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        target = Target("https", "127.0.0.1", port, b"/v1/x", b"127.0.0.1")
        p = pool(connect_timeout=0.2)
        with pytest.raises(ConnectTimeout):
            await p.request(b"POST", target, [], b"{}")
        assert p.open == 0
        server.close()

    run(main())


def test_an_answer_bigger_than_the_read_buffer_is_read_whole(run: Any) -> None:
    big = b"x" * (MAX_BUFFERED * 3)  # a batch of embeddings, say

    async def main() -> None:
        async with Server(answer(big)) as server:
            resp = await pool(read_timeout=1.0).request(b"POST", server.target(), [], b"{}")
            assert await resp.read() == big

    run(main())


def test_a_gzip_answer_whose_stream_stops_short_is_a_bad_response(run: Any) -> None:
    """The HTTP framing is complete, the gzip stream is not: zlib alone would hand back
    the first part as if it were the whole answer (a 200 with cut-off JSON, cached)."""
    packed = gzip.compress(b'{"usage":{"prompt_tokens":3}}' * 50)
    cut = packed[: len(packed) // 2]

    async def stream(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(cut), cut))

    async def main() -> None:
        async with Server(answer(cut, b"Content-Encoding: gzip")) as server:
            resp = await pool().request(b"POST", server.target(), [], b"{}")
            with pytest.raises(BadResponse):
                await resp.read()
        async with Server(stream) as server:
            resp = await pool().request(b"POST", server.target(), [], b"{}")
            with pytest.raises(BadResponse):
                while await resp.next_chunk():
                    pass
        async with Server(answer(b"", b"Content-Encoding: gzip")) as server:
            resp = await pool().request(b"POST", server.target(), [], b"{}")
            assert await resp.read() == b""  # an empty body is no stream at all: fine

    run(main())


def test_a_connection_handed_over_as_the_wait_times_out_stays_in_the_pool(run: Any) -> None:
    """The waiter's deadline and the release of a connection come due in one loop
    iteration (a busy loop): the waiter times out, and the connection it was handed must
    go back to the pool, not stay counted and unused until the provider closes it."""
    import time

    async def main() -> None:
        async with Server(answer(b"")) as server:
            loop = asyncio.get_running_loop()
            p = pool(max_connections=1, connect_timeout=0.3)
            first = await p.request(b"POST", server.target(), [], b"{}")
            while not first._conn.complete:
                await asyncio.sleep(0.01)
            start = loop.time()
            second = asyncio.ensure_future(p.request(b"POST", server.target(), [], b"{}"))
            await asyncio.sleep(0)
            loop.call_at(start + 0.25, time.sleep, 0.1)  # the loop busy across the deadline
            loop.call_at(start + 0.29, first.release)
            with pytest.raises(ConnectTimeout):
                await second
            third = await p.request(b"POST", server.target(), [], b"{}")
            assert await third.read() == b""
            assert (p.open, server.connections) == (1, 1)

    run(main())


def test_a_gzip_stream_whose_first_piece_decodes_to_nothing_goes_on(run: Any) -> None:
    payload = b"data: 0\n\ndata: 1\n\ndata: [DONE]\n\n"
    packed = gzip.compress(payload)

    async def handler(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        for piece in (packed[:10], packed[10:]):  # the gzip header alone first
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")

    async def main() -> None:
        async with Server(handler) as server:
            resp = await pool().request(b"POST", server.target(), [], b"{}")
            got = b""
            while chunk := await resp.next_chunk():
                got += chunk
            assert got == payload

    run(main())


def test_bytes_after_a_complete_answer_are_not_part_of_it(run: Any) -> None:
    async def handler(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nX-Stray: 1\r\nContent-Length: 5\r\n\r\nextra"
        )

    async def main() -> None:
        async with Server(handler) as server:
            p = pool()
            resp = await p.request(b"POST", server.target(), [], b"{}")
            assert await resp.read() == b"ok"
            assert resp.headers.items() == [("content-length", "2")]
            assert p.open == 0  # a connection that spoke out of turn is not reused

    run(main())


def test_interim_answers_are_skipped_and_empty_answers_are_complete(run: Any) -> None:
    async def handler(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        if b"/v1/empty" in request:
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            return
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async def main() -> None:
        async with Server(handler) as server:
            p = pool(read_timeout=0.5)
            resp = await p.request(b"POST", server.target(), [], b"{}")
            assert (resp.status, resp.headers.items()) == (200, [("content-length", "2")])
            assert await resp.read() == b"ok"
            resp = await p.request(b"POST", server.target("/v1/empty"), [], b"{}")
            assert (resp.status, await resp.read()) == (204, b"")
            assert server.connections == 1

    run(main())


def test_closing_a_released_answer_leaves_the_next_request_alone(run: Any) -> None:
    async def main() -> None:
        async with Server(answer(b"ok")) as server:
            p = pool()
            first = await p.request(b"POST", server.target(), [], b"{}")
            assert await first.read() == b"ok"
            second = await p.request(b"POST", server.target(), [], b"{}")  # same connection
            first.close()  # a late hang-up handler of the first request
            assert await second.read() == b"ok"
            assert server.connections == 1

    run(main())


def test_no_free_connection_within_the_connect_timeout_is_connect_timeout(run: Any) -> None:
    async def main() -> None:
        async with Server(after(1)) as server:
            p = pool(max_connections=1, connect_timeout=0.2)
            busy = asyncio.ensure_future(p.request(b"POST", server.target(), [], b"{}"))
            await asyncio.sleep(0.05)
            with pytest.raises(ConnectTimeout) as caught:
                await p.request(b"POST", server.target(), [], b"{}")
            assert caught.value.request_sent is False  # never left: nothing to charge
            assert await (await busy).read() == b"ok"

    run(main())


def test_what_the_ledger_is_told_about_each_failure(run: Any) -> None:
    """ConnectFailed: the request never left. Anything after it was written: it may have
    been billed (views charge the reserved bound), a 200 most of all."""

    async def took_it(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.1)  # the provider is generating...
        writer.transport.abort()  # ...when a load balancer cuts the connection

    async def brotli(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 3\r\n\r\nabc")

    async def main() -> None:
        async with Server(took_it) as server:
            with pytest.raises(Disconnected) as dropped:
                await pool().request(b"POST", server.target(), [], b'{"q":1}')
            assert server.requests and dropped.value.request_sent
        async with Server(brotli) as server:
            with pytest.raises(BadResponse) as undecodable:
                await pool().request(b"POST", server.target(), [], b"{}")
            assert undecodable.value.status == 200
        async with Server(answer(b"")) as server:
            gone = server.target()
        with pytest.raises(ConnectFailed) as refused:
            await pool().request(b"POST", gone, [], b"{}")
        assert refused.value.request_sent is False
        from proxy.views import _may_have_been_billed

        assert _may_have_been_billed(dropped.value, status=0)
        assert _may_have_been_billed(undecodable.value, status=0)
        assert not _may_have_been_billed(refused.value, status=0)

    run(main())


def test_a_stream_whose_answer_cannot_start_stops_the_generation(
    run: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid
    from types import SimpleNamespace

    from proxy import views
    from proxy.upstream import upstream_close, upstream_pool

    async def sse(request: bytes, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(20):
            writer.write(b"7\r\ndata:\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    class HungUp(SimpleNamespace):
        async def start(self, *args: Any) -> None:
            raise OSError("the client is gone")

        async def send(self, message: Any) -> None:
            raise OSError("the client is gone")

        def latency_ms(self) -> int:
            return 1

    settled: list[Any] = []

    async def record_settle(admission: Any, usage: Any) -> None:
        settled.append(usage)

    monkeypatch.setattr(views, "_settle", record_settle)

    async def main() -> None:
        async with Server(sse) as server:
            settings.OPENAI_UPSTREAM_BASE_URL = f"http://127.0.0.1:{server.port}/v1"
            ex = HungUp(upstream_seconds=None, cost=0, request_id=uuid.uuid4(), cache_status="")
            parsed = SimpleNamespace(
                endpoint=views.CHAT,
                model="gpt-4o-mini",
                client_wants_usage=False,
                input_tokens_bound=10,
                choices=1,
            )
            admission = SimpleNamespace(reserved_micros=1, output_tokens_allowed=16)
            with pytest.raises(OSError):
                await views.relay_stream(
                    ex,  # type: ignore[arg-type]
                    parsed,  # type: ignore[arg-type]
                    admission,  # type: ignore[arg-type]
                    "/chat/completions",
                    b"{}",
                    [],
                    "run",
                    False,
                )
            assert upstream_pool().open == 0, "the provider was left generating"
            # The provider took the request: its reservation is charged in full at once.
            assert [u.cost_micros for u in settled] == [1]
            await upstream_close()

    run(main())
