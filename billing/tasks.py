"""Thin Celery tasks: each calls one service. Schedules live in settings.CELERY_BEAT_SCHEDULE."""

from __future__ import annotations

from celery import shared_task

from . import services


@shared_task
def usage_history_purge() -> dict[str, int]:
    return services.usage_history_purge()


@shared_task
def subscriptions_lapse() -> int:
    return services.subscriptions_lapse()
