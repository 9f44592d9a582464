"""Readings of shared state for /metrics and the staff page (ledger, rollups, drift)."""

from __future__ import annotations

from typing import Any

from django.core.cache import cache

# Written by the reconcile task, read at scrape time by every web worker.
DRIFT_CACHE_KEY = "ops:ledger-drift"


def reservations_in_flight() -> float | None:
    """Reservations taken and not settled or released; None when the ledger cannot say."""
    return None


def rollup_lag_seconds() -> float | None:
    return None


def drift_report() -> dict[str, Any] | None:
    report = cache.get(DRIFT_CACHE_KEY)
    return report if isinstance(report, dict) else None


def ledger_drift_micros() -> float | None:
    report = drift_report()
    return None if report is None else float(report["drift_micros"])


def ledger_drift_windows() -> float | None:
    report = drift_report()
    return None if report is None else float(len(report["windows"]))
