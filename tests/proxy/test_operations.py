"""Operations through a real proxy: the spend-spike breaker, /metrics and the request log.

One uvicorn with two workers in multiprocess metrics mode, Celery eager (no worker runs in
tests) and no debounce, so an evaluation runs right after each recorded settle. With the
Redis ledger, usage is recorded when drained: the test drains after each request, as the
drain beat does every LEDGER_DRAIN_INTERVAL_SECONDS.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from budgets.models import AlertChannel, ModelPrice, SpikeBreaker, UsageRecord
from budgets.services import usage_drain
from keys.models import ApiKey, KeyAuditEvent
from tests.conftest import ROOT, FakeOpenAI, free_port, wait_for_http
from tests.proxy.conftest import ProxyServer, Tenant, server_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TOKEN = "ops-metrics-token"


@pytest.fixture(scope="module")
def ops_proxy(
    django_db_setup: None, fake_openai_server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProxyServer, Path]]:
    tmp = tmp_path_factory.mktemp("ops-proxy")
    (tmp / "prom").mkdir()
    log_path = tmp / "server.log"
    env = server_env(
        fake_openai_server.base_url,
        CELERY_TASK_ALWAYS_EAGER="true",
        ALERTS_CHECK_DEBOUNCE_SECONDS="0",
        METRICS_TOKEN=TOKEN,
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "prom"),
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
    )
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "budgetllm_site.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "2",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ProxyServer(base_url=f"http://127.0.0.1:{port}/v1", process=proc, env=env)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=40)
        yield server, log_path
    finally:
        server.stop()


def scrape(server: ProxyServer) -> dict[str, float]:
    response = httpx.get(
        server.base_url.removesuffix("/v1") + "/metrics",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 200
    return {
        f"{s.name}{{{','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))}}}": s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metrics_from_all_workers_change_when_traffic_flows(
    ops_proxy: tuple[ProxyServer, Path], tenant: Tenant, fake_openai: FakeOpenAI
) -> None:
    server, _ = ops_proxy
    assert httpx.get(server.base_url.removesuffix("/v1") + "/metrics").status_code == 401
    before = scrape(server)
    client = server.client(tenant.raw, max_retries=0)
    for i in range(6):  # spread over both workers by the kernel; distinct, so no cache hits
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=20
        )
    with pytest.raises(openai.APIStatusError):
        server.client("bllm_not_a_key", max_retries=0).models.list()
    after = scrape(server)
    key = "budgetllm_proxy_requests_total{cache=miss,status=200}"
    assert after[key] - before.get(key, 0) == 6
    assert after["budgetllm_spend_micros_total{}"] > before.get("budgetllm_spend_micros_total{}", 0)
    assert (
        after["budgetllm_upstream_seconds_count{}"]
        - before.get("budgetllm_upstream_seconds_count{}", 0)
        >= 6
    )
    assert "budgetllm_ledger_reservations_in_flight{}" in after


def test_one_json_log_line_per_request_with_the_request_id(
    ops_proxy: tuple[ProxyServer, Path], tenant: Tenant
) -> None:
    server, log_path = ops_proxy
    raw = server.client(tenant.raw, max_retries=0).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "secret prompt text"}],
        max_tokens=20,
        extra_headers={"X-BudgetLLM-Run-Id": "nightly-7"},
    )
    request_id = raw.headers["x-request-id"]

    def line() -> dict[str, Any] | None:
        for text in log_path.read_text().splitlines():
            if request_id in text:
                return dict(json.loads(text))
        return None

    from tests.proxy.helpers import eventually

    entry = eventually(line)
    assert entry["msg"] == "proxied request" and entry["status"] == 200
    assert entry["endpoint"] == "chat.completions" and entry["model"] == "gpt-4o-mini"
    assert entry["account_id"] == tenant.account.pk
    assert entry["api_key_id"] == str(tenant.api_key.public_id)
    assert entry["cost_micros"] > 0 and entry["output_tokens"] == 20
    # The run, and the provider's own id for the request (what its support asks for).
    assert entry["run_id"] == "nightly-7"
    assert entry["upstream_request_id"] == raw.headers["x-upstream-request-id"]
    assert entry["upstream_request_id"].startswith("req_fake")
    text = log_path.read_text()
    assert "secret prompt text" not in text and tenant.raw not in text and "sk-proj" not in text


def test_a_runaway_loop_through_the_proxy_is_paused_by_the_breaker(
    ops_proxy: tuple[ProxyServer, Path], tenant: Tenant
) -> None:
    server, _ = ops_proxy
    # A pricey custom price makes each request cost ~$0.03, so a few dozen requests are
    # a runaway; the breaker floor is lowered to $0.10 for the same reason.
    ModelPrice.objects.create(
        account=tenant.account,
        model="gpt-4o-mini",
        input_micros_per_mtok=1_000_000_000,
        output_micros_per_mtok=1_000_000_000,
    )
    SpikeBreaker.objects.create(api_key=tenant.api_key, floor_micros=100_000)
    now = timezone.now()
    for hour in range(1, 25):  # its usual rate: $0.01 an hour
        UsageRecord.objects.create(
            request_id=uuid.uuid4(),
            account=tenant.account,
            api_key=tenant.api_key,
            endpoint="chat.completions",
            model="gpt-4o-mini",
            cost_micros=10_000,
            cache_status="MISS",
            http_status=200,
            created_at=now - dt.timedelta(hours=hour, minutes=6),
        )
    client = server.client(tenant.raw, max_retries=0)
    spent = 0
    answered = 0
    refusal: openai.PermissionDeniedError | None = None
    for step in range(40):  # bounded: the loop would go on forever
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"step {step}: keep going"}],
                max_tokens=20,
            )
        except openai.PermissionDeniedError as exc:
            refusal = exc
            break
        answered += 1
        spent += int(float(raw.headers["x-budgetllm-cost-usd"]) * 1_000_000)
        usage_drain()  # what the drain beat does (Redis ledger); nothing to do on SQL
    assert refusal is not None, f"not paused after {answered} requests (${spent / 1e6:.2f})"
    assert refusal.code == "key_paused"
    # Paused by the first evaluation after the window's spend passed the $0.10 floor:
    # at most one more request got through than the floor needed.
    per_request = spent // answered
    assert answered <= 100_000 // per_request + 2
    key = ApiKey.objects.get(pk=tenant.api_key.pk)
    assert key.paused_at is not None
    assert KeyAuditEvent.objects.filter(
        account=tenant.account, subject__contains="spend-spike breaker"
    ).exists()
    email = AlertChannel.objects.get(account=tenant.account, kind="email")
    assert email.last_success_at is not None  # the alert went out at once
