"""The spend-spike breaker, driven by usage records (the proxy-level test is in tests/ops)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.core import mail

from budgets import alerts
from budgets.models import SpikeBreaker, UsageRecord
from keys.models import ApiKey, KeyAuditEvent
from tests.conftest import Person

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def key_for(person: Person, name: str = "agent") -> ApiKey:
    return ApiKey.objects.create(
        account=person.account, name=name, prefix=f"bllm_{name}", digest="0" * 64
    )


def spend_at(key: ApiKey, when: datetime, micros: int) -> None:
    UsageRecord.objects.create(
        request_id=uuid.uuid4(),
        account_id=key.account_id,
        api_key=key,
        endpoint="chat.completions",
        model="gpt-4o",
        cost_micros=micros,
        cache_status="MISS",
        http_status=200,
        created_at=when,
    )


def steady_history(key: ApiKey, *, per_hour_micros: int) -> None:
    for hour in range(1, 25):
        spend_at(
            key,
            NOW - timedelta(minutes=5) - timedelta(hours=hour) + timedelta(minutes=1),
            per_hour_micros,
        )


@pytest.mark.django_db(transaction=True)
def test_a_spike_far_above_the_keys_own_rate_pauses_it_and_alerts(owner: Person) -> None:
    key = key_for(owner)
    steady_history(key, per_hour_micros=200_000)  # $0.20 an hour → ~$0.017 per 5 minutes
    for second in range(0, 240, 10):  # a loop: $0.10 every 10 s = $2.40 in 4 minutes
        spend_at(key, NOW - timedelta(seconds=second), 100_000)
    with time_machine.travel(NOW, tick=False):
        paused = alerts.spike_breaker_evaluate(account=owner.account)
    assert paused == [key]
    key.refresh_from_db()
    assert key.paused_at == NOW
    [message] = mail.outbox
    assert message.subject == "[BudgetLLM] Key “agent” paused: spend spike"
    assert "spent $2.40 in the last 5 minutes, more than 10× its usual rate" in message.body
    assert KeyAuditEvent.objects.filter(
        action="api_key.paused", subject__contains="breaker"
    ).exists()
    assert SpikeBreaker.objects.get(api_key=key).tripped_at == NOW


@pytest.mark.django_db(transaction=True)
def test_steady_heavy_use_does_not_trip(owner: Person) -> None:
    key = key_for(owner)
    steady_history(key, per_hour_micros=24_000_000)  # $24/h → $2 per 5 minutes is normal
    spend_at(key, NOW - timedelta(minutes=1), 2_400_000)
    with time_machine.travel(NOW, tick=False):
        assert alerts.spike_breaker_evaluate(account=owner.account) == []


@pytest.mark.django_db(transaction=True)
def test_spend_under_the_floor_never_trips(owner: Person) -> None:
    key = key_for(owner)
    spend_at(key, NOW - timedelta(minutes=1), 900_000)  # new key, $0.90 < $1 floor
    with time_machine.travel(NOW, tick=False):
        assert alerts.spike_breaker_evaluate(account=owner.account) == []


@pytest.mark.django_db(transaction=True)
def test_breaker_can_be_turned_off_or_tuned_per_key(owner: Person, settings: Any) -> None:
    off, tuned = key_for(owner, "off"), key_for(owner, "tuned")
    alerts.breaker_settings_save(
        api_key=off, enabled=False, window_seconds=None, multiplier=None, floor_micros=None
    )
    alerts.breaker_settings_save(
        api_key=tuned, enabled=True, window_seconds=None, multiplier=None, floor_micros=5_000_000
    )
    for key in (off, tuned):
        spend_at(key, NOW - timedelta(minutes=1), 3_000_000)
    with time_machine.travel(NOW, tick=False):
        assert alerts.spike_breaker_evaluate(account=owner.account) == []
        spend_at(tuned, NOW - timedelta(seconds=30), 3_000_000)  # $6 > the $5 floor
        assert alerts.spike_breaker_evaluate(account=owner.account) == [tuned]
    settings.SPIKE_BREAKER_ENABLED = False
    with time_machine.travel(NOW, tick=False):
        assert alerts.spike_breaker_evaluate(account=owner.account) == []


@pytest.mark.django_db(transaction=True)
def test_a_resumed_key_is_not_tripped_again_by_the_same_spike(owner: Person) -> None:
    key = key_for(owner)
    spend_at(key, NOW - timedelta(minutes=1), 3_000_000)
    with time_machine.travel(NOW, tick=False):
        assert alerts.spike_breaker_evaluate(account=owner.account) == [key]
    ApiKey.objects.filter(pk=key.pk).update(paused_at=None)  # the user resumes it
    with time_machine.travel(NOW + timedelta(minutes=1), tick=False):
        assert alerts.spike_breaker_evaluate(account=owner.account) == []
        assert len(mail.outbox) == 1


@pytest.mark.django_db(transaction=True)
def test_other_accounts_keys_are_untouched(owner: Person, outsider: Person) -> None:
    key = key_for(owner)
    spend_at(key, NOW - timedelta(minutes=1), 3_000_000)
    with time_machine.travel(NOW, tick=False):
        assert alerts.spike_breaker_evaluate(account=outsider.account) == []
    key.refresh_from_db()
    assert key.paused_at is None
