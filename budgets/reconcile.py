"""Hourly check that the spend ledger's counters agree with the recorded usage.

For every account with usage in the last two days, the counters of today's and
yesterday's local day (the account's and each key's) are compared with the sum of the
UsageRecord costs in the same window. The ledger charges a counter and records the usage
in one step, so any difference is a bug or lost data: it is logged (one JSON line per
window) and published for /metrics (`budgetllm_ledger_drift_*`).

Day windows only: usage history is purged after the plan's retention (7 days on Free),
so a month counter may rightly exceed the records that are left. A window must differ
on three reads in a row (buffered usage drained before each) to count, so a request
settling mid-check is not reported.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Account
from keys.models import ApiKey

from . import services
from .health import DRIFT_CACHE_KEY
from .ledger import get_ledger
from .models import UsageRecord
from .windows import DAY, window_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowDrift:
    counter_key: str
    account_id: int
    counter_micros: int
    recorded_micros: int

    @property
    def drift_micros(self) -> int:
        return self.counter_micros - self.recorded_micros


def _read(*, accounts: list[Account], now: dt.datetime) -> dict[str, WindowDrift]:
    wanted: dict[str, tuple[int, dt.datetime, dt.datetime, int | None]] = {}
    keys_by_account: dict[int, list[int]] = {}
    for key_id, account_id in ApiKey.objects.filter(account__in=accounts).values_list(
        "id", "account_id"
    ):
        keys_by_account.setdefault(account_id, []).append(key_id)
    for account in accounts:
        today = window_for(period=DAY, now=now, tz_name=account.timezone)
        yesterday = window_for(
            period=DAY,
            now=(today.start or now) - dt.timedelta(seconds=1),
            tz_name=account.timezone,
        )
        for window in (today, yesterday):
            if window.start is None or window.resets_at is None:  # day windows always have both
                continue
            wanted[f"account:{account.pk}:day:{window.label}"] = (
                account.pk,
                window.start,
                window.resets_at,
                None,
            )
            for key_id in keys_by_account.get(account.pk, []):
                wanted[f"key:{key_id}:day:{window.label}"] = (
                    account.pk,
                    window.start,
                    window.resets_at,
                    key_id,
                )
    counters = get_ledger().read_counters(list(wanted))
    out = {}
    for key, (account_id, start, end, only_key) in wanted.items():
        rows = UsageRecord.objects.filter(
            account_id=account_id, created_at__gte=start, created_at__lt=end
        )
        if only_key is not None:
            rows = rows.filter(api_key_id=only_key)
        recorded = int(rows.aggregate(total=Sum("cost_micros"))["total"] or 0)
        state = counters.get(key)
        out[key] = WindowDrift(key, account_id, state.spent_micros if state else 0, recorded)
    return out


def ledger_reconcile(*, now: dt.datetime | None = None, reads: int = 3) -> dict[str, Any]:
    """Compare, log and publish; returns the report stored for /metrics and the staff page."""
    now = now or timezone.now()
    tolerance = settings.LEDGER_DRIFT_TOLERANCE_MICROS
    account_ids = (
        UsageRecord.objects.filter(created_at__gte=now - dt.timedelta(days=2))
        .values_list("account_id", flat=True)
        .distinct()
    )
    accounts = list(Account.objects.filter(pk__in=account_ids))
    drifting: dict[str, WindowDrift] = {}
    for attempt in range(reads):
        services.usage_drain()
        found = {
            k: d
            for k, d in _read(accounts=accounts, now=now).items()
            if abs(d.drift_micros) > tolerance
        }
        # A window counts only if it differs by the same amount on every read.
        drifting = (
            found
            if attempt == 0
            else {k: d for k, d in found.items() if k in drifting and drifting[k] == d}
        )
        if not drifting:
            break
        if attempt + 1 < reads:
            time.sleep(0.2)
    windows = [{**asdict(d), "drift_micros": d.drift_micros} for d in drifting.values()]
    report = {
        "checked_at": now.isoformat(),
        "accounts": len(accounts),
        "drift_micros": sum(d.drift_micros for d in drifting.values()),
        "windows": windows,
    }
    cache.set(DRIFT_CACHE_KEY, report, timeout=None)
    for window in windows:
        logger.error("ledger drift", extra={"event": "ledger_drift", **window})
    if not windows:
        logger.info(
            "ledger reconcile: no drift",
            extra={"event": "ledger_reconciled", "accounts": len(accounts)},
        )
    return report
