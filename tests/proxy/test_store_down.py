"""With Redis down, a request is refused with 503 naming what is down, cache on or off."""

from __future__ import annotations

import httpx
import pytest
from django.conf import settings

from tests.conftest import FakeOpenAI, free_port
from tests.proxy.conftest import Tenant, server_env, start_proxy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("cache_header", [{}, {"X-BudgetLLM-Cache": "off"}])
def test_redis_down_refuses_with_503_naming_it(
    fake_openai_server: FakeOpenAI, tenant: Tenant, cache_header: dict[str, str]
) -> None:
    if not settings.REDIS_URL:
        pytest.skip("needs the Redis ledger")
    dead = f"redis://127.0.0.1:{free_port()}/3"  # nothing listens there
    server = start_proxy(server_env(fake_openai_server.base_url, REDIS_URL=dead))
    try:
        r = httpx.post(
            server.base_url + "/chat/completions",
            headers={"Authorization": f"Bearer {tenant.raw}", **cache_header},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            timeout=20,
        )
    finally:
        server.stop()
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "ledger_unavailable", r.text
    assert "Redis" in r.json()["error"]["message"]
