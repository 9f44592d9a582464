"""Periodic ledger work (scheduled in settings.CELERY_BEAT_SCHEDULE). Thin: call a service."""

from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(name="budgets.tasks.sweep_expired_reservations", ignore_result=True)
def sweep_expired_reservations() -> int:
    """Reservations whose worker died are charged at their full reserved amount."""
    return services.reservations_sweep()


@shared_task(name="budgets.tasks.drain_usage", ignore_result=True)
def drain_usage() -> int:
    """Write usage buffered by the Redis ledger into UsageRecord rows."""
    return services.usage_drain()
