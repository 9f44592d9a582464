"""Celery entry points for budgets (scheduled in settings.CELERY_BEAT_SCHEDULE).
Thin: the work lives in services and rollups."""

from __future__ import annotations

from celery import shared_task

from . import rollups, services


@shared_task(name="budgets.rollup_recent")
def rollup_recent_task() -> int:
    """Beat, every minute: today's DailyUsage rows of accounts with recent usage."""
    return len(rollups.rollup_recent())


@shared_task(name="budgets.rollup_yesterday")
def rollup_yesterday_task() -> int:
    """Beat, hourly: yesterday's rows of accounts that just passed their local midnight."""
    return len(rollups.rollup_yesterday())


@shared_task(name="budgets.tasks.sweep_expired_reservations", ignore_result=True)
def sweep_expired_reservations() -> int:
    """Reservations whose worker died are charged at their full reserved amount."""
    return services.reservations_sweep()


@shared_task(name="budgets.tasks.drain_usage", ignore_result=True)
def drain_usage() -> int:
    """Write usage buffered by the Redis ledger into UsageRecord rows."""
    return services.usage_drain()
