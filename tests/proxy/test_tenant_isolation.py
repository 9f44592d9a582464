"""What one account can do to another through the proxy, and what the provider's
answers may tell a client about the stored provider key."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from keys import vault
from keys.models import ProviderKey
from keys.services import api_key_create, provider_key_hint
from tests.conftest import FakeOpenAI, Person
from tests.proxy.conftest import ProxyServer, make_tenant, server_env, start_proxy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "Say hello"}]
# The fake answers a key containing "invalid" with OpenAI's 401, quoting the key masked.
REJECTED_KEY = "sk-proj-invalidAUDITkeyQQ11RR22SS33TT44wxyz"


def _post(proxy: ProxyServer, raw: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(
        proxy.base_url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {raw}", **headers},
        timeout=30,
    )


def test_the_providers_401_never_quotes_the_provider_key(proxy: ProxyServer, owner: Person) -> None:
    provider_key = ProviderKey.objects.create(
        account=owner.account,
        ciphertext=vault.encrypt(REJECTED_KEY),
        hint=provider_key_hint(REJECTED_KEY),
    )
    _row, raw = api_key_create(
        account=owner.account, actor=owner.user, provider_key=provider_key, name="rejected"
    )
    answers = [
        _post(proxy, raw, {"model": "gpt-4o-mini", "messages": MESSAGES}),
        _post(proxy, raw, {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}),
        httpx.get(proxy.base_url + "/models", headers={"Authorization": f"Bearer {raw}"}),
    ]
    for resp in answers:
        assert resp.status_code == 401, resp.text
        # Neither the key's ends (OpenAI quotes its first 8 and last 4 characters) nor
        # OpenAI's "Incorrect API key" text, which the client reads as its bllm_ key.
        assert REJECTED_KEY[:12] not in resp.text and REJECTED_KEY[-4:] not in resp.text
        assert resp.json()["error"]["code"] == "provider_key_rejected", resp.text


@pytest.fixture
def two_slot_proxy(fake_openai: FakeOpenAI) -> Iterator[ProxyServer]:
    """Two provider connections per worker, one of them at most per account."""
    server = start_proxy(
        server_env(
            fake_openai.base_url,
            PROXY_UPSTREAM_MAX_CONNECTIONS="2",
            PROXY_UPSTREAM_CONNECT_TIMEOUT_SECONDS="2",
            PROXY_MAX_IN_FLIGHT_PER_ACCOUNT="1",
        )
    )
    try:
        yield server
    finally:
        server.stop()


def test_one_account_cannot_take_every_provider_connection(
    two_slot_proxy: ProxyServer, owner: Person, outsider: Person
) -> None:
    greedy = make_tenant(owner)
    other = make_tenant(outsider)
    slow = {"model": "gpt-4o-mini", "messages": MESSAGES}
    with ThreadPoolExecutor(2) as pool:
        # The greedy account's two slow generations, each 5 s at the provider...
        # (uncached, or the second would wait for the first's answer instead)
        hogs = [
            pool.submit(
                _post,
                two_slot_proxy,
                greedy.raw,
                slow,
                **{"X-Fake-Delay-Ms": "5000", "X-BudgetLLM-Cache": "off"},
            )
            for _ in range(2)
        ]
        time.sleep(1)
        # ...leave the other account a connection: answered at once, not a 502 after
        # the 2-s wait for a free one.
        started = time.monotonic()
        resp = _post(two_slot_proxy, other.raw, slow)
        assert resp.status_code == 200, resp.text
        assert time.monotonic() - started < 2
        statuses = sorted(h.result().status_code for h in hogs)
    assert statuses == [200, 429], statuses
    refused = next(h.result() for h in hogs if h.result().status_code == 429)
    assert json.loads(refused.text)["error"]["code"] == "too_many_in_flight"
