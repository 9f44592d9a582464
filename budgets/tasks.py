"""Celery entry points for budgets. Thin: the work lives in services and rollups."""

from __future__ import annotations

from celery import shared_task

from . import rollups


@shared_task(name="budgets.rollup_recent")
def rollup_recent_task() -> int:
    """Beat, every minute: today's DailyUsage rows of accounts with recent usage."""
    return len(rollups.rollup_recent())


@shared_task(name="budgets.rollup_yesterday")
def rollup_yesterday_task() -> int:
    """Beat, hourly: yesterday's rows of accounts that just passed their local midnight."""
    return len(rollups.rollup_yesterday())
