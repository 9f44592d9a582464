"""Small helpers shared by the proxy tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from accounts.models import Account
from budgets.models import UsageRecord
from budgets.services import cap_status, usage_drain


def records(account: Account) -> list[UsageRecord]:
    """Every usage record of the account, after draining what the ledger queued."""
    usage_drain()
    return list(UsageRecord.objects.filter(account=account).order_by("created_at", "id"))


def eventually(check: Callable[[], Any], *, attempts: int = 100, pause: float = 0.05) -> Any:
    """Poll a condition the server reaches asynchronously (bounded; not a timing assertion)."""
    last: Any = None
    for _ in range(attempts):
        last = check()
        if last:
            return last
        time.sleep(pause)
    raise AssertionError(f"condition not reached: {last!r}")


def ledger_totals(account: Account) -> tuple[int, int]:
    """(spent, reserved) of the account's first cap's current window."""
    status = cap_status(account=account)
    assert status, "the account needs a cap for its counters to be read"
    return status[0].spent_micros, status[0].reserved_micros


def completed_response() -> dict[str, Any]:
    """A finished Responses API answer with one message ("Hi there") and its usage."""
    return {
        "id": "r1",
        "object": "response",
        "status": "completed",
        "output": [
            {
                "id": "m1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Hi there", "annotations": []}],
            }
        ],
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
