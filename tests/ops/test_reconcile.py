from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.test import Client

from budgets.models import UsageRecord
from budgets.tasks import ledger_reconcile_task
from keys.models import ApiKey
from proxy.reqlog import JsonFormatter
from tests.alerts.conftest import _fresh_ledger, charge  # noqa: F401 - fixture reused
from tests.conftest import Person
from tests.ops.test_metrics import TOKEN, scrape


@pytest.fixture(autouse=True)
def _quiet(settings: Any) -> None:
    settings.SPIKE_BREAKER_ENABLED = False


@pytest.mark.django_db(transaction=True)
def test_reconcile_reports_forced_drift_as_metric_and_log(
    owner: Person, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.METRICS_TOKEN = TOKEN
    settings.PROMETHEUS_MULTIPROC_DIR = ""
    key = ApiKey.objects.create(account=owner.account, name="k", prefix="bllm_rec", digest="0")
    charge(owner.account, 1_000_000, api_key=key)
    charge(owner.account, 250_000, api_key=key)

    assert ledger_reconcile_task() == 0  # counters and records agree
    assert scrape(Client())["budgetllm_ledger_drift_micros{}"] == 0

    # Force drift: a recorded request is lost while the ledger keeps its charge.
    UsageRecord.objects.filter(cost_micros=250_000).delete()
    with caplog.at_level(logging.ERROR, logger="budgets.reconcile"):
        assert ledger_reconcile_task() == 2  # the account's and the key's day window

    samples = scrape(Client())
    assert samples["budgetllm_ledger_drift_micros{}"] == 500_000
    assert samples["budgetllm_ledger_drift_windows{}"] == 2
    drift_logs = [r for r in caplog.records if r.getMessage() == "ledger drift"]
    assert len(drift_logs) == 2
    line = json.loads(JsonFormatter().format(drift_logs[0]))
    assert line["event"] == "ledger_drift" and line["drift_micros"] == 250_000
    assert line["counter_micros"] - line["recorded_micros"] == 250_000
