"""The Redis usage drain: a drainer whose lock ran out must not trim what it never stored."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import Account
from budgets import ledger as ledger_module
from budgets.models import UsageRecord
from tests.budgets.conftest import REDIS_SKIP, cleanup_redis, redis_ledger

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(REDIS_SKIP, reason="needs Redis"),
]


def _record(account_id: int) -> dict:
    return {
        "request_id": str(uuid.uuid4()),
        "account_id": account_id,
        "api_key_id": None,
        "endpoint": "chat.completions",
        "model": "gpt-4o-mini",
        "cost_micros": 7,
        "cache_status": "MISS",
        "http_status": 200,
        "created_at": timezone.now().isoformat(),
    }


def test_a_drainer_that_lost_its_lock_does_not_trim_records_it_never_read(
    owner, monkeypatch: pytest.MonkeyPatch
) -> None:
    account: Account = owner.account
    ledger = redis_ledger()
    try:
        for _ in range(100):
            ledger.record_usage(_record(account.id))
        stalled = threading.Event()
        go = threading.Event()
        real_write = ledger_module.write_usage_records
        slow_thread: list[threading.Thread] = []

        def write(records):  # type: ignore[no-untyped-def]
            if threading.current_thread() in slow_thread and not stalled.is_set():
                # This drainer read its batch, then stalls past its lock (60 s: a large
                # backlog, a slow database, a paused worker).
                stalled.set()
                go.wait(20)
            return real_write(records)

        monkeypatch.setattr(ledger_module, "write_usage_records", write)

        def slow_drain() -> None:
            try:
                ledger.drain_usage(limit=100)
            finally:
                connection.close()

        slow = threading.Thread(target=slow_drain)
        slow_thread.append(slow)
        slow.start()
        assert stalled.wait(20)
        # Its lock expires; the next beat's drain takes over and stores everything.
        ledger.client().delete(f"{ledger.prefix}drain-lock")
        assert ledger.drain_usage(limit=100) == 100
        # New usage arrives meanwhile.
        for _ in range(100):
            ledger.record_usage(_record(account.id))
        go.set()
        slow.join(20)
        ledger.drain_usage(limit=100)
        assert UsageRecord.objects.filter(account=account).count() == 200
    finally:
        cleanup_redis(ledger)
