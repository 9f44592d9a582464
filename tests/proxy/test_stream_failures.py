"""Streams that end badly are still charged correctly and never left reserved."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from budgets.models import Cap
from tests.conftest import FakeOpenAI
from tests.proxy.conftest import ProxyServer, Tenant, server_env, start_proxy
from tests.proxy.helpers import eventually, ledger_totals, records

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "Write a long story"}]


def test_client_disconnect_mid_stream_is_charged_and_not_left_reserved(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    tenant.cap("10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    headers = {"Authorization": f"Bearer {tenant.raw}", "X-Fake-Delay-Ms": "100"}
    events = 0
    with httpx.stream(
        "POST", proxy.base_url + "/chat/completions", json=body, headers=headers, timeout=10
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events += 1
            if events == 4:
                break  # hang up after the role chunk and three words
    [record] = eventually(lambda: records(tenant.account))
    assert record.http_status == 499
    assert record.cost_micros > 0  # never $0
    assert 3 <= record.output_tokens < 20  # what was streamed, estimated upward
    assert ledger_totals(tenant.account) == (record.cost_micros, 0)  # nothing left reserved


def test_an_upstream_that_drops_the_stream_is_an_sdk_error_and_charged_for_what_came(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    tenant.cap("10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    client = proxy.client(tenant.raw, max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"X-Fake-Drop-After": "6"},
    )
    with pytest.raises(openai.APIError) as caught:
        for _ in stream:
            pass
    assert "broke off" in caught.value.message
    [record] = records(tenant.account)
    assert record.http_status == 502
    assert record.cost_micros > 0
    assert ledger_totals(tenant.account) == (record.cost_micros, 0)


def test_a_stream_without_usage_is_charged_an_upward_estimate(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    client = proxy.client(tenant.raw)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            extra_headers={"X-Fake-No-Usage": "1"},
        )
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    [record] = records(tenant.account)
    assert record.output_tokens >= 20  # bytes of text >= tokens
    assert record.input_tokens >= len(MESSAGES[0]["content"])


# --- a client that stops reading --------------------------------------------------------


@pytest.fixture(scope="module")
def one_slot_proxy(django_db_setup: None, fake_openai_server: FakeOpenAI) -> Iterator[ProxyServer]:
    """One provider connection per worker, a 1-s send timeout, and 8 s to wait for the
    connection: a stream nobody reads would block every other request behind it."""
    server = start_proxy(
        server_env(
            fake_openai_server.base_url,
            PROXY_UPSTREAM_MAX_CONNECTIONS="1",
            PROXY_UPSTREAM_CONNECT_TIMEOUT_SECONDS="8",
            PROXY_CLIENT_SEND_TIMEOUT_SECONDS="1",
            # The tenant's next request must wait for the one connection, not be refused
            # as the account's second request in flight (the default share of a pool of 1).
            PROXY_MAX_IN_FLIGHT_PER_ACCOUNT="2",
        )
    )
    try:
        yield server
    finally:
        server.stop()


def _stream_nobody_reads(
    proxy: ProxyServer, tenant: Tenant, fake: bytes = b"X-Fake-Word-Bytes: 2000000\r\n"
) -> socket.socket:
    """A connected client that asks for a large stream (by default 40 MB; `fake`: the fake
    server's control headers) and then reads nothing."""
    url = urlsplit(proxy.base_url)
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, before connect
    sock.connect((url.hostname, url.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\n"
        b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
        b"%sContent-Length: %d\r\n\r\n%s"
        % (url.netloc.encode(), tenant.raw.encode(), fake, len(body), body)
    )
    sock.settimeout(10)
    assert sock.recv(12) == b"HTTP/1.1 200"
    return sock


def _bytes_until_closed(sock: socket.socket) -> int:
    """How much the client can still read before the server's close (a 10-s silence
    fails the test)."""
    received = 0
    try:
        while chunk := sock.recv(65536):
            received += len(chunk)
    except ConnectionResetError:
        pass
    return received


def test_a_stream_whose_client_reads_nothing_ends_and_frees_its_provider_connection(
    one_slot_proxy: ProxyServer, fake_openai: FakeOpenAI, tenant: Tenant
) -> None:
    tenant.cap("10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    stalled = _stream_nobody_reads(one_slot_proxy, tenant)
    try:
        # The stalled stream holds the worker's only provider connection until the send
        # timeout ends it; without that, this waits 8 s for a connection and fails.
        answer = one_slot_proxy.client(tenant.raw, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content
        # Dropped at once, not closed after the megabytes it had been sent were read.
        assert _bytes_until_closed(stalled) < 256 * 1024
    finally:
        stalled.close()
    first, second = records(tenant.account)
    assert first.http_status == 499
    # It fell behind the provider by what the buffers held: charged at the reserved bound.
    assert first.output_tokens == 16384  # gpt-4o-mini's most output: the request set none
    assert second.http_status == 200
    assert ledger_totals(tenant.account) == (first.cost_micros + second.cost_micros, 0)


def test_a_slow_client_that_hangs_up_is_charged_at_the_bound(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    # Chunks padded with bytes that carry no output (OpenAI's `obfuscation`, logprobs):
    # the relay falls behind its slow client, and what the provider generates meanwhile
    # waits in the buffers between them, unread. Estimated from what was read (~7 bytes of
    # text a 1-KB event), the hang-up came to a fraction of what the provider billed.
    # Here loopback's large socket buffers overflow the kept events first (no estimate);
    # with small ones reading from the provider pauses first (`unreported_output_tokens`).
    tenant.cap("10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    sock = _stream_nobody_reads(
        proxy, tenant, b"X-Fake-Words: 20000\r\nX-Fake-Obfuscation-Bytes: 1000\r\n"
    )
    time.sleep(2)  # the provider writes what the buffers take; the proxy reads until it pauses
    sock.close()
    [record] = eventually(lambda: records(tenant.account) or None)
    assert record.http_status == 499
    assert record.output_tokens == 16384  # gpt-4o-mini's most output: the request set none
    assert ledger_totals(tenant.account) == (record.cost_micros, 0)


def test_a_client_that_falls_behind_and_catches_up_gets_the_whole_stream_in_order(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    tenant.cap("10", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    word_bytes = 500_000  # 20 words: 10 MB, far more than the buffers between us hold
    body = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {tenant.raw}", "X-Fake-Word-Bytes": str(word_bytes)}
    with httpx.stream(
        "POST", proxy.base_url + "/chat/completions", json=body, headers=headers, timeout=30
    ) as resp:
        assert resp.status_code == 200
        time.sleep(1)  # reads nothing for a while: the relay waits for this client
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == " ".join(f"word{i}".ljust(word_bytes, "x") for i in range(20))
    assert chunks[-1]["usage"]["completion_tokens"] == 20
    [record] = records(tenant.account)
    assert record.http_status == 200
    assert record.output_tokens == 20
    assert ledger_totals(tenant.account) == (record.cost_micros, 0)
