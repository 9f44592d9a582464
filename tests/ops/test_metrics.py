from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import observe_request

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-test-token"


def scrape(client: Client) -> dict[str, float]:
    """Every sample of /metrics as {"name{label=value,…}": value}, via prometheus' own parser."""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


@pytest.fixture
def metrics_on(settings: Any) -> None:
    settings.METRICS_TOKEN = TOKEN
    settings.PROMETHEUS_MULTIPROC_DIR = ""


def test_metrics_is_404_when_no_token_is_configured(client: Client, settings: Any, db: Any) -> None:
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
def test_metrics_needs_the_bearer_token(
    client: Client, metrics_on: None, header: str | None, db: Any
) -> None:
    kwargs = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"budgetllm" not in response.content


@pytest.mark.django_db
def test_metrics_parse_and_change_when_traffic_flows(client: Client, metrics_on: None) -> None:
    before = scrape(client)
    observe_request(
        status=200,
        cache="MISS",
        cost_micros=1500,
        saved_micros=0,
        upstream_seconds=0.4,
        overhead_seconds=0.002,
        refused_scope=None,
    )
    observe_request(
        status=200,
        cache="HIT",
        cost_micros=0,
        saved_micros=1500,
        upstream_seconds=None,
        overhead_seconds=0.001,
        refused_scope=None,
    )
    observe_request(
        status=402,
        cache="BYPASS",
        cost_micros=0,
        saved_micros=0,
        upstream_seconds=None,
        overhead_seconds=0.001,
        refused_scope="account",
    )
    after = scrape(client)

    def grew(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert grew("budgetllm_proxy_requests_total{cache=miss,status=200}") == 1
    assert grew("budgetllm_proxy_requests_total{cache=hit,status=200}") == 1
    assert grew("budgetllm_proxy_requests_total{cache=bypass,status=402}") == 1
    assert grew("budgetllm_spend_micros_total{}") == 1500
    assert grew("budgetllm_saved_micros_total{}") == 1500
    assert grew("budgetllm_cap_refusals_total{scope=account}") == 1
    assert grew("budgetllm_upstream_seconds_count{}") == 1
    assert grew("budgetllm_proxy_overhead_seconds_count{}") == 3
    assert grew("budgetllm_upstream_seconds_bucket{le=0.5}") == 1
    assert after["budgetllm_ledger_reservations_in_flight{}"] >= 0


def test_several_worker_processes_aggregate_in_multiprocess_mode(
    client: Client, settings: Any, tmp_path: Path, db: Any
) -> None:
    settings.METRICS_TOKEN = TOKEN
    settings.PROMETHEUS_MULTIPROC_DIR = str(tmp_path)
    worker = (
        "from proxy.metrics import observe_request\n"
        "for _ in range(3):\n"
        "    observe_request(status=200, cache='MISS', cost_micros=10, saved_micros=0,"
        " upstream_seconds=0.1, overhead_seconds=0.001, refused_scope=None)\n"
    )
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-c", worker],
            cwd=ROOT,
            env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
            check=True,
            timeout=60,
        )
    samples = scrape(client)
    assert samples["budgetllm_proxy_requests_total{cache=miss,status=200}"] == 6
    assert samples["budgetllm_spend_micros_total{}"] == 60
    assert samples["budgetllm_upstream_seconds_count{}"] == 6
