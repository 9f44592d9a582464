"""Celery entry points for budgets. Thin: the work lives in services, alerts and rollups."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from . import alerts, health, rollups, services
from .models import AlertChannel


@shared_task(name="budgets.tasks.rollup_recent", ignore_result=True)
def rollup_recent_task() -> int:
    """Beat, every minute: today's DailyUsage rows of accounts with recent usage."""
    done = len(rollups.rollup_recent())
    health.rollup_done_mark()  # /metrics reports the rollup lag from this
    return done


@shared_task(name="budgets.tasks.rollup_yesterday", ignore_result=True)
def rollup_yesterday_task() -> int:
    """Beat, hourly: yesterday's rows of accounts that just passed their local midnight."""
    return len(rollups.rollup_yesterday())


@shared_task(ignore_result=True)
def alerts_evaluate_task(account_id: int) -> None:
    # Clear the debounce marker before reading spend: a settle landing after this point
    # queues the next evaluation instead of being missed.
    alerts.alerts_pending_clear(account_id=account_id)
    alerts.alerts_evaluate(account_id=account_id)


@shared_task(
    ignore_result=True,
    autoretry_for=(alerts.RetryableDeliveryError,),
    retry_backoff=30,  # 30 s, 60 s, 120 s, … (jittered), capped below
    retry_backoff_max=3600,
    retry_jitter=True,
    max_retries=settings.ALERT_DELIVERY_MAX_RETRIES,
)
def alert_deliver_task(channel_id: int, message: dict[str, Any]) -> None:
    channel = AlertChannel.objects.filter(pk=channel_id).first()
    if channel is None or not channel.enabled:
        return
    try:
        alerts.alert_deliver(channel=channel, message=alerts.AlertMessage.from_dict(message))
    except alerts.RetryableDeliveryError:
        raise
    except alerts.DeliveryError:
        # Recorded on the channel (shown as failing); trying again would fail the same way.
        return


@shared_task(name="budgets.tasks.sweep_expired_reservations", ignore_result=True)
def sweep_expired_reservations() -> int:
    """Reservations whose worker died are charged at their full reserved amount."""
    return services.reservations_sweep()


@shared_task(name="budgets.tasks.drain_usage", ignore_result=True)
def drain_usage() -> int:
    """Write usage buffered by the Redis ledger into UsageRecord rows."""
    return services.usage_drain()


@shared_task(name="budgets.tasks.ledger_reconcile_task", ignore_result=True)
def ledger_reconcile_task() -> int:
    """Beat, hourly: ledger counters vs recorded usage; returns the drifting windows."""
    from .reconcile import ledger_reconcile

    return len(ledger_reconcile()["windows"])
