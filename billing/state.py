"""The subscription state machine both providers' events are mapped onto.

Providers retry for a day and do not guarantee order, so a transition carries the
provider's own time of the event and is applied only if it is not older than the last
one applied; at the same instant only forward moves count. Terminal states are final.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .models import Subscription

S = Subscription.Status

# How far along its life a subscription is, for ties between events of the same instant.
RANK: dict[str, int] = {
    S.CREATED: 0,
    S.AUTHENTICATED: 1,
    S.ACTIVE: 2,
    S.PENDING: 3,
    S.HALTED: 4,
    S.CANCELLED: 5,
    S.COMPLETED: 5,
    S.EXPIRED: 5,
}
TERMINAL = frozenset({S.CANCELLED, S.COMPLETED, S.EXPIRED})


@dataclass(frozen=True)
class Transition:
    status: str
    event_at: datetime
    current_period_end: datetime | None = None
    # None = the event says nothing about it.
    cancel_at_period_end: bool | None = None


def transition_allowed(sub: Subscription, t: Transition) -> tuple[bool, str]:
    if sub.status in TERMINAL:
        return False, f"{sub.status} is final"
    if sub.last_event_at is not None:
        if t.event_at < sub.last_event_at:
            return False, "older than the last event applied"
        if t.event_at == sub.last_event_at and RANK[t.status] < RANK[sub.status]:
            return False, f"would move {sub.status} back to {t.status}"
    return True, ""


def transition_apply(sub: Subscription, t: Transition) -> str:
    """Apply `t` to `sub` in memory if allowed; returns what happened, for the event log."""
    allowed, why = transition_allowed(sub, t)
    if not allowed:
        return f"kept {sub.status}: {why}"
    before = sub.status
    sub.status = t.status
    sub.last_event_at = t.event_at
    if t.current_period_end is not None:
        sub.current_period_end = t.current_period_end
    if t.cancel_at_period_end is not None:
        sub.cancel_at_period_end = t.cancel_at_period_end
    return f"{before} → {sub.status}"
