"""Celery entry points for accounts. Thin: the work lives in services."""

from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(name="accounts.delete_unused_signups")
def delete_unused_signups_task() -> int:
    """Beat, daily: remove users who never signed in within a week of asking."""
    return services.unused_signups_delete()
