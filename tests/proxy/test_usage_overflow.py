"""A usage record whose token counts pass the database's integer column (an input bound
of many images) must not jam the ledger: settle, sweep and drain."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from django.test import override_settings
from django.utils import timezone

from budgets.ledger import reset_ledger
from budgets.models import Cap, ModelPrice, Reservation, UsageRecord
from budgets.services import reservations_sweep, usage_drain
from tests.conftest import FakeOpenAI
from tests.proxy.conftest import Tenant, server_env, start_proxy

pytestmark = pytest.mark.django_db(transaction=True)

# gpt-4o-mini reserves 48,169 tokens an image: 45,000 bare image parts (~1 MB, under the
# default 16 MiB body limit) bound the input at 2.17e9 tokens, past PostgreSQL's integer.
IMAGES = 45_000


def _huge_body() -> dict:
    parts = [{"type": "image_url", "image_url": {"url": "x"}}] * IMAGES
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, *parts]}],
        "stream": True,
        "max_tokens": 50,
    }


@pytest.mark.parametrize("backend", ["sql", "redis"])
def test_a_huge_input_bound_is_recorded_and_does_not_jam_the_ledger(
    fake_openai_server: FakeOpenAI, tenant: Tenant, backend: str
) -> None:
    from django.conf import settings

    if backend == "redis" and not settings.REDIS_URL:
        pytest.skip("needs Redis")
    # A cheap custom price keeps the 2e9-token worst case ($21.7) inside the Free plan.
    ModelPrice.objects.create(
        account=tenant.account,
        model="gpt-4o-mini",
        input_micros_per_mtok=10_000,
        output_micros_per_mtok=40_000,
        max_output_tokens=16_384,
    )
    tenant.cap("90", scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH)
    server = start_proxy(
        server_env(
            fake_openai_server.base_url,
            LEDGER_BACKEND=backend,
            PROXY_MAX_BODY_BYTES=str(16 * 1024 * 1024),
        )
    )
    try:
        headers = {
            "Authorization": f"Bearer {tenant.raw}",
            "X-BudgetLLM-Cache": "off",
            # No usage chunk: the stream is charged its input bound (+ what was streamed).
            "X-Fake-No-Usage": "1",
        }
        with httpx.stream(
            "POST",
            server.base_url + "/chat/completions",
            json=_huge_body(),
            headers=headers,
            timeout=60,
        ) as resp:
            assert resp.status_code == 200, resp.read()
            resp.read()
        # A normal request after it.
        small = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        ok = httpx.post(
            server.base_url + "/chat/completions",
            json=small,
            headers={"Authorization": f"Bearer {tenant.raw}", "X-BudgetLLM-Cache": "off"},
            timeout=30,
        )
        assert ok.status_code == 200
    finally:
        server.stop()
    with override_settings(LEDGER_BACKEND=backend):
        reset_ledger()
        try:
            usage_drain()
            # A dead worker's reservations are charged by the sweep.
            reservations_sweep(now=timezone.now() + dt.timedelta(days=1))
        finally:
            reset_ledger()
    rows = list(UsageRecord.objects.filter(account=tenant.account).order_by("id"))
    assert len(rows) == 2, [(r.http_status, r.input_tokens) for r in rows]
    assert Reservation.objects.filter(settled_at__isnull=True).count() == 0
