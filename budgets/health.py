"""Readings of shared state for /metrics and the staff page (ledger, rollups, drift).

Each reader answers None when it cannot tell (the gauge is then left out of the scrape),
and never raises: a broken Redis must not turn /metrics into a 500.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.cache import cache

logger = logging.getLogger(__name__)

# Written by the reconcile task, read at scrape time by every web worker.
DRIFT_CACHE_KEY = "ops:ledger-drift"
# Unix time of the last finished per-minute rollup (budgets.tasks.rollup_recent_task).
ROLLUP_DONE_CACHE_KEY = "ops:rollup-recent-at"


def reservations_in_flight() -> float | None:
    """Reservations taken and not yet settled, released or swept."""
    from .ledger import RedisLedger, get_ledger
    from .models import Reservation

    try:
        ledger = get_ledger()
        if isinstance(ledger, RedisLedger):
            return float(ledger.client().zcard(ledger.deadlines_key))
        return float(Reservation.objects.filter(settled_at__isnull=True).count())
    except Exception:
        logger.exception("could not count reservations in flight")
        return None


def usage_buffer_length() -> float | None:
    """Usage rows the Redis ledger holds that are not in the database yet (0 for SQL)."""
    from .ledger import RedisLedger, get_ledger

    try:
        ledger = get_ledger()
        if isinstance(ledger, RedisLedger):
            return float(ledger.client().llen(ledger.usage_key))
        return 0.0
    except Exception:
        logger.exception("could not read the usage buffer length")
        return None


def rollup_done_mark() -> None:
    cache.set(ROLLUP_DONE_CACHE_KEY, time.time(), timeout=None)


def rollup_lag_seconds() -> float | None:
    """Seconds since the dashboard rollups last caught up (None before the first run)."""
    try:
        done = cache.get(ROLLUP_DONE_CACHE_KEY)
    except Exception:
        logger.exception("could not read the rollup mark")
        return None
    return None if done is None else max(time.time() - float(done), 0.0)


def drift_report() -> dict[str, Any] | None:
    try:
        report = cache.get(DRIFT_CACHE_KEY)
    except Exception:
        logger.exception("could not read the drift report")
        return None
    return report if isinstance(report, dict) else None


def ledger_drift_micros() -> float | None:
    report = drift_report()
    return None if report is None else float(report["drift_micros"])


def ledger_drift_windows() -> float | None:
    report = drift_report()
    return None if report is None else float(len(report["windows"]))
