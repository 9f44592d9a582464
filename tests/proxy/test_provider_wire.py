"""The proxy against a provider that misbehaves on the wire (a scripted raw-HTTP server).

The fake OpenAI server (aiohttp) always speaks well-formed HTTP; these answers are the
ones a load balancer or a broken provider sends: a refusal whose body breaks off, an
encoding we cannot read on an error, a 200 that is not an API answer at all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import pytest

from budgets.models import Cap
from tests.proxy.conftest import ProxyServer, Tenant, running_proxy, server_env
from tests.proxy.helpers import ledger_totals, records

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ANSWERS = {
    # A 500 whose body stops after 16 of the 200 bytes it announced.
    "500-cut": b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
    b'Content-Length: 200\r\n\r\n{"error": {"mess',
    # A refusal in an encoding we never asked for.
    "400-br": b"HTTP/1.1 400 Bad Request\r\nContent-Encoding: br\r\nContent-Length: 3\r\n\r\nabc",
    # A page from something in the way (a captive proxy, a wrong base URL).
    "200-html": b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 20\r\n\r\n"
    b"<html>sign in</html>",
}


class Provider:
    """Answers each request with ANSWERS[its X-Mode header], then closes the connection."""

    def __init__(self) -> None:
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            async def start() -> None:
                self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
                self.port = self.server.sockets[0].getsockname()[1]

            self.loop.run_until_complete(start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
            await reader.readexactly(int(fields[b"Content-Length"]))
            self.requests += 1
            writer.write(ANSWERS[fields[b"x-mode"].decode()])
            await writer.drain()
        finally:
            writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    p = Provider()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def wire_proxy(django_db_setup: None, provider: Provider) -> Iterator[ProxyServer]:
    env = server_env(f"http://127.0.0.1:{provider.port}/v1", PROXY_FORWARD_HEADERS="x-mode")
    with running_proxy(env) as server:
        yield server


def _chat(proxy: ProxyServer, tenant: Tenant, mode: str, **body: object) -> httpx.Response:
    return httpx.post(
        proxy.base_url + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": mode}], **body},
        headers={"Authorization": f"Bearer {tenant.raw}", "X-Mode": mode},
        timeout=15,
    )


@pytest.mark.parametrize(
    ("mode", "stream"), [("500-cut", False), ("400-br", False), ("400-br", True)]
)
def test_a_provider_refusal_whose_body_cannot_be_read_keeps_its_status_and_is_not_charged(
    wire_proxy: ProxyServer, tenant: Tenant, mode: str, stream: bool
) -> None:
    # The provider said no: it billed nothing, whatever happened to the rest of its answer
    # (it was charged the whole reservation as "may have been billed", and answered 502).
    tenant.cap("10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    resp = _chat(wire_proxy, tenant, mode, stream=stream)
    if not stream:
        assert resp.status_code == int(mode[:3])
    assert set(resp.json()["error"]) >= {"message", "type", "code"}
    [record] = records(tenant.account)
    assert record.cost_micros == 0
    assert ledger_totals(tenant.account) == (0, 0)


def test_an_answer_without_usage_is_charged_in_full_and_never_cached(
    wire_proxy: ProxyServer, provider: Provider, tenant: Tenant
) -> None:
    # Cached, the page was replayed for the key's TTL, and a streamed hit on it was a 500.
    before = provider.requests
    first = _chat(wire_proxy, tenant, "200-html")
    assert first.headers["x-budgetllm-cache"] == "MISS"
    assert first.headers["x-budgetllm-cost-usd"] != "0.000000"  # no usage: the bound
    again = _chat(wire_proxy, tenant, "200-html", stream=True)
    assert again.headers["x-budgetllm-cache"] == "MISS"
    assert provider.requests == before + 2
