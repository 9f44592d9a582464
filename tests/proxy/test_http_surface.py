"""The HTTP surface of /v1 as a client sees it: status, envelope and headers of errors, and
what the official SDK does with them (raise at once, or retry as the server advises).

The proxy here keeps resolved keys as in production (PROXY_KEY_CACHE_SECONDS), so a key
whose account is deleted is still cached when the next request arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from accounts.services import account_delete
from keys.services import api_key_set_paused
from tests.conftest import FakeOpenAI
from tests.proxy.conftest import (
    Counted,
    ProxyServer,
    Tenant,
    make_tenant,
    running_proxy,
    server_env,
)
from tests.proxy.helpers import records

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "Say hello"}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}


@pytest.fixture(scope="module")
def surface_proxy(django_db_setup: None, fake_openai_server: FakeOpenAI) -> Iterator[ProxyServer]:
    env = server_env(
        fake_openai_server.base_url,
        # Long enough that a key resolved by one request is still cached by the next.
        PROXY_KEY_CACHE_SECONDS="60",
        PROXY_FORWARD_HEADERS="x-fake-status,x-fake-retry-after,x-fake-should-retry",
    )
    with running_proxy(env) as server:
        yield server


@pytest.fixture
def proxy(surface_proxy: ProxyServer, fake_openai: FakeOpenAI) -> ProxyServer:
    return surface_proxy


def post(proxy: ProxyServer, tenant: Tenant, **headers: str) -> httpx.Response:
    return httpx.post(
        proxy.base_url + "/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {tenant.raw}", **headers},
        timeout=20,
    )


def test_a_deleted_account_whose_key_is_still_cached_gets_a_401_not_a_500(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    assert post(proxy, tenant).status_code == 200  # the key is now cached by the worker
    account_delete(user=tenant.person.user)
    resp = post(proxy, tenant, **{"Cache-Control": "no-store"})
    assert resp.status_code == 401, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert resp.headers["x-should-retry"] == "false"
    assert fake_openai.stats()["/v1/chat/completions"] == 1


def test_an_undecryptable_provider_key_is_raised_at_once_not_retried(
    proxy: ProxyServer,
    tenant: Tenant,
    fake_openai: FakeOpenAI,
    counted_client: Callable[..., Counted],
) -> None:
    # The vault keys changed: every retry would fail the same way.
    tenant.provider_key.ciphertext = "gAAAAAnot-a-fernet-token"
    tenant.provider_key.save(update_fields=["ciphertext"])
    counted = counted_client(tenant.raw)
    with pytest.raises(openai.InternalServerError) as caught:
        counted.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.code == "provider_key_undecryptable"
    with pytest.raises(openai.InternalServerError):
        counted.client.models.list()
    assert len(counted.sent) == 2  # one request each, no retries
    assert sum(fake_openai.stats().values()) == 0
    assert records(tenant.account) == []


def test_the_providers_advice_on_retrying_reaches_the_sdk(
    proxy: ProxyServer,
    tenant: Tenant,
    fake_openai: FakeOpenAI,
    counted_client: Callable[..., Counted],
) -> None:
    # A provider refusal is passed on as it was sent, its retry headers included: the SDK
    # waits as long as the provider asked, and stops when it says retrying cannot help.
    resp = post(proxy, tenant, **{"X-Fake-Status": "429", "X-Fake-Retry-After": "7"})
    assert resp.status_code == 429
    assert (resp.headers["retry-after"], resp.headers["retry-after-ms"]) == ("7", "7000")
    models = httpx.get(
        proxy.base_url + "/models",
        headers={"Authorization": f"Bearer {tenant.raw}", "X-Fake-Status": "503"}
        | {"X-Fake-Retry-After": "2"},
        timeout=20,
    )
    assert (models.status_code, models.headers["retry-after"]) == (503, "2")

    counted = counted_client(tenant.raw)
    for stream in (False, True):
        fake_openai.reset()
        with pytest.raises(openai.RateLimitError):
            counted.client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=stream,
                extra_headers={"X-Fake-Status": "429", "X-Fake-Should-Retry": "false"},
            )
        assert fake_openai.stats()["/v1/chat/completions"] == 1  # raised at once


def test_405_names_the_allowed_method(proxy: ProxyServer, tenant: Tenant) -> None:
    auth = {"Authorization": f"Bearer {tenant.raw}"}
    for method, path, allowed in (
        ("GET", "/chat/completions", "POST"),
        ("DELETE", "/responses", "POST"),
        ("POST", "/models", "GET"),
        ("OPTIONS", "/embeddings", "POST"),
    ):
        resp = httpx.request(method, proxy.base_url + path, headers=auth, timeout=20)
        assert resp.status_code == 405, resp.text
        assert resp.headers["allow"] == allowed
        assert resp.json()["error"]["code"] == "method_not_allowed"


def test_a_second_tenant_is_unaffected_by_a_deleted_account(
    proxy: ProxyServer, tenant: Tenant, outsider: object
) -> None:
    # The other account's requests go on as before while a deleted one is refused.
    other = make_tenant(outsider, "other")  # type: ignore[arg-type]
    assert post(proxy, tenant).status_code == 200
    account_delete(user=tenant.person.user)
    assert post(proxy, tenant, **{"Cache-Control": "no-store"}).status_code == 401
    assert post(proxy, other).status_code == 200


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("malformed_json", 400),
        ("unknown_key", 401),
        ("paused_key", 403),
        ("unknown_path", 404),
        ("wrong_method", 405),
        ("too_large", 413),
    ],
)
def test_errors_that_retrying_cannot_fix_are_raised_after_one_request(
    proxy: ProxyServer,
    tenant: Tenant,
    fake_openai: FakeOpenAI,
    counted_client: Callable[..., Counted],
    case: str,
    status: int,
) -> None:
    counted = counted_client("bllm_" + "x" * 44 if case == "unknown_key" else tenant.raw)
    client = counted.client
    if case == "paused_key":
        api_key_set_paused(api_key=tenant.api_key, actor=tenant.person.user, paused=True)
    with pytest.raises(openai.APIStatusError) as caught:
        if case == "malformed_json":
            client.post("/chat/completions", cast_to=object, body=[1, 2])
        elif case == "unknown_path":
            client.post("/completions", cast_to=object, body={"model": "gpt-4o-mini"})
        elif case == "wrong_method":
            client.get("/chat/completions", cast_to=object)
        elif case == "too_large":
            big = "a" * int(proxy.env["PROXY_MAX_BODY_BYTES"])
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": big}]
            )
        else:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.status_code == status
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.response.headers["x-request-id"]
    assert len(counted.sent) == 1
    assert sum(fake_openai.stats().values()) == 0
