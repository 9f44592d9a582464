"""Everything the proxy refuses, each as an OpenAI-shaped error the SDK understands."""

from __future__ import annotations

import httpx
import openai
import pytest
from django.urls import reverse
from django.utils import timezone

from budgets.models import Cap
from keys.services import api_key_revoke, api_key_set_paused
from tests.conftest import FakeOpenAI
from tests.proxy.conftest import ProxyServer, Tenant
from tests.proxy.helpers import records

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "Say hello"}]


def post(proxy: ProxyServer, path: str, content: bytes, key: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(proxy.base_url + path, content=content, headers=headers, timeout=10)


def assert_envelope(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]
    assert resp.headers["x-request-id"]
    return error


def test_missing_key_is_401(proxy: ProxyServer) -> None:
    resp = post(proxy, "/chat/completions", b"{}", key=None)
    assert_envelope(resp, 401, "missing_api_key")


def test_invalid_key_is_401_for_the_sdk(proxy: ProxyServer, tenant: Tenant) -> None:
    client = proxy.client("bllm_" + "x" * 44, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.code == "invalid_api_key"


def test_revoked_key_is_401(proxy: ProxyServer, tenant: Tenant) -> None:
    client = proxy.client(tenant.raw, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    api_key_revoke(api_key=tenant.api_key, actor=tenant.person.user)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_malformed_json_is_400(proxy: ProxyServer, tenant: Tenant) -> None:
    resp = post(proxy, "/chat/completions", b'{"model": "gpt-4o-mini", "messages": [', tenant.raw)
    assert_envelope(resp, 400, "invalid_json")
    resp = post(proxy, "/chat/completions", b"[1, 2]", tenant.raw)
    assert_envelope(resp, 400, "invalid_json")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "gpt-4o-mini", "messages": "hello"}', "messages"),
        (b'{"model": 4, "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"}',
            "max_tokens",
        ),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
            "stream",
        ),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "n": 0}', "n"),
    ],
)
def test_wrong_types_are_400_naming_the_parameter(
    proxy: ProxyServer, tenant: Tenant, body: bytes, param: str
) -> None:
    resp = post(proxy, "/chat/completions", body, tenant.raw)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == param


def test_wrong_types_reach_the_sdk_as_bad_request(proxy: ProxyServer, tenant: Tenant) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        proxy.client(tenant.raw).responses.create(model="gpt-4o-mini", input=42)  # type: ignore[arg-type]
    assert caught.value.param == "input"


def test_oversized_body_is_413_with_the_limit_in_the_message(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    limit = int(proxy.env["PROXY_MAX_BODY_BYTES"])
    big = (
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        + b"a" * limit
        + b'"}]}'
    )
    resp = post(proxy, "/chat/completions", big, tenant.raw)
    error = assert_envelope(resp, 413, "request_too_large")
    assert str(limit) in error["message"]
    assert resp.headers["x-should-retry"] == "false"
    assert fake_openai.stats().get("/v1/chat/completions", 0) == 0

    # Embeddings have a smaller limit of their own (the provider takes 300k tokens).
    embeddings = int(proxy.env["PROXY_MAX_EMBEDDINGS_BODY_BYTES"])
    assert embeddings < limit
    many = b'{"model": "text-embedding-3-small", "input": "' + b"a" * embeddings + b'"}'
    resp = post(proxy, "/embeddings", many, tenant.raw)
    error = assert_envelope(resp, 413, "request_too_large")
    assert "PROXY_MAX_EMBEDDINGS_BODY_BYTES" in error["message"]
    assert fake_openai.stats().get("/v1/embeddings", 0) == 0


def test_audio_input_is_refused_clearly(proxy: ProxyServer, tenant: Tenant) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        proxy.client(tenant.raw).chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
                    ],
                }
            ],
        )
    assert caught.value.code == "unsupported_content"
    assert "cannot be bounded" in caught.value.message


def test_unknown_model_is_400_with_how_to_price_it(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        proxy.client(tenant.raw).chat.completions.create(
            model="my-own-finetune-xyz", messages=MESSAGES
        )
    assert caught.value.code == "model_not_priced"
    assert "my-own-finetune-xyz" in caught.value.message
    assert fake_openai.stats().get("/v1/chat/completions", 0) == 0

    # The way out the message names: a price on the Caps page admits the model from the
    # very next request, priced as the user said ($2 and $8 per million tokens).
    page = tenant.person.client.post(
        reverse("model_price_save"),
        {
            "model": "My-Own-Finetune-XYZ",
            "input_usd": "2",
            "output_usd": "8",
            "max_output_tokens": "1000",
        },
    )
    assert page.status_code == 302
    raw = proxy.client(tenant.raw).chat.completions.with_raw_response.create(
        model="my-own-finetune-xyz", messages=MESSAGES
    )
    usage = raw.parse().usage
    assert usage is not None
    assert raw.headers["x-budgetllm-max-tokens"] == "1000"  # its ceiling, written in
    [record] = records(tenant.account)
    assert record.cost_micros == usage.prompt_tokens * 2 + usage.completion_tokens * 8


def test_paused_key_is_403_key_paused(proxy: ProxyServer, tenant: Tenant) -> None:
    api_key_set_paused(api_key=tenant.api_key, actor=tenant.person.user, paused=True)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        proxy.client(tenant.raw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.type == "key_paused"
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_paused_account_is_403_account_paused(proxy: ProxyServer, tenant: Tenant) -> None:
    tenant.account.paused_at = timezone.now()
    tenant.account.save(update_fields=["paused_at"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        proxy.client(tenant.raw).embeddings.create(model="text-embedding-3-small", input="x")
    assert caught.value.type == "account_paused"


def test_run_cap_limits_each_run_separately(proxy: ProxyServer, tenant: Tenant) -> None:
    # gpt-4o: one answer costs ~$0.000205 and reserves ~$0.00041 up front, so a
    # $0.0007 run cap admits two answers per run but not a third.
    tenant.cap("0.0007", scope=Cap.Scope.RUN, period=Cap.Period.RUN)
    client = proxy.client(tenant.raw, max_retries=0)

    def ask(run: str) -> None:
        client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            max_tokens=20,
            extra_headers={"X-BudgetLLM-Run-Id": run, "Cache-Control": "no-cache"},
        )

    ask("run-a")
    ask("run-a")
    with pytest.raises(openai.APIStatusError) as caught:
        ask("run-a")
    assert caught.value.status_code == 402
    assert caught.value.code == "run_run_cap"
    ask("run-b")  # a new run starts from zero
    runs = [r.run_id for r in records(tenant.account)]
    assert runs == ["run-a", "run-a", "run-b"]


def test_run_budget_header_lowers_the_run_cap_but_never_raises_it(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    tenant.cap("0.0007", scope=Cap.Scope.RUN, period=Cap.Period.RUN)
    client = proxy.client(tenant.raw, max_retries=0)
    low = {
        "X-BudgetLLM-Run-Id": "r1",
        "X-BudgetLLM-Run-Budget-USD": "0.00001",
        "Cache-Control": "no-cache",
    }
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=20, extra_headers=low
        )
    assert caught.value.status_code == 402
    high = {
        "X-BudgetLLM-Run-Id": "r2",
        "X-BudgetLLM-Run-Budget-USD": "100",
        "Cache-Control": "no-cache",
    }
    for _ in range(2):
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=20, extra_headers=high
        )
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=20, extra_headers=high
        )
    assert caught.value.status_code == 402


def test_a_bad_run_budget_header_is_400(proxy: ProxyServer, tenant: Tenant) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        proxy.client(tenant.raw).chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_headers={"X-BudgetLLM-Run-Id": "r", "X-BudgetLLM-Run-Budget-USD": "lots"},
        )
    assert caught.value.code == "invalid_run_budget"


def test_unknown_path_is_404_envelope(proxy: ProxyServer, tenant: Tenant) -> None:
    resp = post(proxy, "/completions", b"{}", tenant.raw)
    assert_envelope(resp, 404, "unknown_url")
    # The API root itself (a base URL typed without the endpoint) answers in the API's
    # shape too, not with the website's HTML page.
    root = httpx.get(proxy.base_url, headers={"Authorization": f"Bearer {tenant.raw}"})
    assert_envelope(root, 404, "unknown_url")


def test_a_typeless_item_reference_never_reaches_the_provider(
    proxy: ProxyServer, tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    # The SDK's ItemReference makes `type` optional: `{"id": "msg_…"}` alone has the
    # provider bill the stored item's tokens, which the request's few bytes do not bound.
    client = proxy.client(tenant.raw, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-4o-mini", input=[{"id": "msg_stored_elsewhere"}])
    assert caught.value.code == "unsupported_content"
    assert fake_openai.stats().get("/v1/responses", 0) == 0
    assert records(tenant.account) == []
