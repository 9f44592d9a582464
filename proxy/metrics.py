"""Prometheus metrics of the proxy, and the /metrics exposition.

`observe_request` is on the proxy's hot path: a dictionary lookup for the labelled
children and a few increments, no I/O beyond prometheus-client's own memory-mapped file
in multiprocess mode. Gauges that describe shared state (reservations in flight, rollup
lag, ledger drift) are not kept per process: they are read from the database/ledger when
/metrics is scraped, so every worker reports the same truth.

Multiprocess mode: set PROMETHEUS_MULTIPROC_DIR in the environment of every worker (before
the process starts; prometheus-client reads it at import) to an empty folder shared by
the workers of one host; /metrics then sums the files of all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REQUESTS = Counter(
    "budgetllm_proxy_requests",
    "Proxied requests by HTTP status and cache result.",
    ["status", "cache"],
)
SPEND = Counter("budgetllm_spend_micros", "Spend charged to accounts, micro-dollars.")
SAVED = Counter("budgetllm_saved_micros", "Spend avoided by cache hits, micro-dollars.")
REFUSALS = Counter(
    "budgetllm_cap_refusals",
    "Requests refused before the provider because a cap (or pause) would be exceeded.",
    ["scope"],
)
UPSTREAM_SECONDS = Histogram(
    "budgetllm_upstream_seconds",
    "Time from sending the upstream request to its last byte.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300),
)
OVERHEAD_SECONDS = Histogram(
    "budgetllm_proxy_overhead_seconds",
    "Time the proxy spends on a request outside the upstream call.",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
)

_CACHE_LABELS = {"HIT": "hit", "MISS": "miss", "BYPASS": "bypass"}
# Labelled children are created once per label pair and reused: `.labels()` validates
# and locks on every call, which the hot path can skip.
_request_children: dict[tuple[int, str], Counter] = {}
_refusal_children: dict[str, Counter] = {}


def observe_request(
    *,
    status: int,
    cache: str,
    cost_micros: int,
    saved_micros: int,
    upstream_seconds: float | None,
    overhead_seconds: float,
    refused_scope: str | None,
) -> None:
    """Record one proxied request. Cheap: called on the proxy's hot path."""
    child = _request_children.get((status, cache))
    if child is None:
        child = REQUESTS.labels(status=str(status), cache=_CACHE_LABELS.get(cache, "none"))
        _request_children[(status, cache)] = child
    child.inc()
    if cost_micros:
        SPEND.inc(cost_micros)
    if saved_micros:
        SAVED.inc(saved_micros)
    if refused_scope is not None:
        refusal = _refusal_children.get(refused_scope)
        if refusal is None:
            refusal = REFUSALS.labels(scope=refused_scope)
            _refusal_children[refused_scope] = refusal
        refusal.inc()
    if upstream_seconds is not None:
        UPSTREAM_SECONDS.observe(upstream_seconds)
    OVERHEAD_SECONDS.observe(overhead_seconds)


class SharedStateCollector(Collector):
    """Gauges read at scrape time from shared state, so all workers agree."""

    def __init__(self, readers: dict[str, tuple[str, Callable[[], float | None]]]) -> None:
        self._readers = readers

    def collect(self) -> Iterable[Metric]:
        for name, (doc, read) in self._readers.items():
            value = read()
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)


def shared_state_readers() -> dict[str, tuple[str, Callable[[], float | None]]]:
    from budgets import health

    return {
        "budgetllm_ledger_reservations_in_flight": (
            "Spend reservations taken and not yet settled or released.",
            health.reservations_in_flight,
        ),
        "budgetllm_rollup_lag_seconds": (
            "Seconds since the dashboard rollups last caught up with recorded usage.",
            health.rollup_lag_seconds,
        ),
        "budgetllm_usage_buffer_length": (
            "Usage rows buffered by the Redis ledger and not yet written to the database.",
            health.usage_buffer_length,
        ),
        "budgetllm_ledger_drift_micros": (
            "Ledger counters minus recorded usage at the last reconcile, summed over windows.",
            health.ledger_drift_micros,
        ),
        "budgetllm_ledger_drift_windows": (
            "Cap windows whose ledger counter disagreed with recorded usage at the last reconcile.",
            health.ledger_drift_windows,
        ),
    }


def exposition(*, multiproc_dir: str) -> bytes:
    """The Prometheus text exposition: this process's (or all workers') metrics + shared gauges."""
    if multiproc_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiproc_dir)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    shared = CollectorRegistry()
    shared.register(SharedStateCollector(shared_state_readers()))
    return body + generate_latest(shared)
