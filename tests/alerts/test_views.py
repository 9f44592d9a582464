from __future__ import annotations

from typing import Any

import pytest
from django.core import mail
from django.urls import reverse

from budgets import alerts
from budgets.models import AlertChannel, SpikeBreaker
from keys.models import ApiKey
from tests.conftest import Person
from tests.fakes.webhook_server import FakeWebhooks


@pytest.mark.django_db
def test_settings_page_lists_the_owners_email_and_locks_webhooks_on_free(owner: Person) -> None:
    response = owner.client.get(reverse("alerts"))
    assert response.status_code == 200
    assert b"owner@example.com" in response.content
    assert b"Slack and Discord alerts are on the Pro and Team plans" in response.content


@pytest.mark.django_db
def test_adding_an_invalid_webhook_rerenders_the_form_with_the_reason(
    owner: Person, pro_plan: None
) -> None:
    response = owner.client.post(
        reverse("alert_channel_add"), {"kind": "slack", "target": "http://example.com/x"}
    )
    assert response.status_code == 200
    assert "start with https://" in response.content.decode()
    assert not AlertChannel.objects.filter(kind="slack").exists()


@pytest.mark.django_db(transaction=True)
def test_send_a_test_alert_per_channel(
    owner: Person, webhooks: FakeWebhooks, pro_plan: None
) -> None:
    response = owner.client.post(
        reverse("alert_channel_add"), {"kind": "discord", "target": webhooks.discord_url()}
    )
    assert response.status_code == 302
    channel = AlertChannel.objects.get(kind="discord")
    response = owner.client.post(
        reverse("alert_channel_test", args=[channel.public_id]), HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    assert b'id="channels"' in response.content and b"<html" not in response.content
    [hit] = webhooks.hits("/api/webhooks/")
    assert hit.body["embeds"][0]["title"] == "Test alert from BudgetLLM"
    assert mail.outbox == []  # only the channel that was tested

    email = AlertChannel.objects.get(kind="email")
    owner.client.post(reverse("alert_channel_test", args=[email.public_id]))
    assert mail.outbox[0].subject == "[BudgetLLM] Test alert from BudgetLLM"


@pytest.mark.django_db(transaction=True)
def test_a_failing_channel_shows_as_failing(
    owner: Person, webhooks: FakeWebhooks, pro_plan: None
) -> None:
    channel = alerts.alert_channel_add(
        account=owner.account, kind="slack", target=webhooks.slack_url()
    )
    webhooks.fail_next("/services/", 500, times=100)
    owner.client.post(reverse("alert_channel_test", args=[channel.public_id]))
    page = owner.client.get(reverse("alerts")).content.decode()
    assert "Failing since" in page and "Slack answered 500" in page
    assert webhooks.slack_url() not in page  # the webhook secret is never shown


@pytest.mark.django_db
def test_outsiders_get_404_for_someone_elses_channel(owner: Person, outsider: Person) -> None:
    [channel] = alerts.alert_channels_for(account=owner.account)
    for name in ("alert_channel_test", "alert_channel_toggle", "alert_channel_delete"):
        response = outsider.client.post(reverse(name, args=[channel.public_id]))
        assert response.status_code == 404
    assert AlertChannel.objects.filter(pk=channel.pk, enabled=True).exists()


@pytest.mark.django_db
def test_breaker_settings_per_key(owner: Person, outsider: Person) -> None:
    key = ApiKey.objects.create(account=owner.account, name="agent", prefix="bllm_k1", digest="0")
    url = reverse("spike_breaker_save", args=[key.public_id])
    assert outsider.client.post(url, {"enabled": "on"}).status_code == 404
    response = owner.client.post(
        url, {"window_minutes": "10", "multiplier": "20", "floor_usd": "5.00"}
    )
    assert response.status_code == 302
    breaker = SpikeBreaker.objects.get(api_key=key)
    assert (breaker.enabled, breaker.window_seconds, breaker.multiplier, breaker.floor_micros) == (
        False,
        600,
        20,
        5_000_000,
    )
    page = owner.client.get(reverse("alerts")).content.decode()
    assert 'value="5.00"' in page and 'value="20"' in page


@pytest.mark.django_db
def test_toggle_and_remove_channel(owner: Person) -> None:
    channel = alerts.alert_channel_add(
        account=owner.account, kind="email", target="ops@example.com"
    )
    owner.client.post(reverse("alert_channel_toggle", args=[channel.public_id]))
    channel.refresh_from_db()
    assert not channel.enabled
    owner.client.post(reverse("alert_channel_delete", args=[channel.public_id]))
    assert not AlertChannel.objects.filter(pk=channel.pk).exists()


def test_settings_page_needs_sign_in(client: Any, db: Any) -> None:
    assert client.get(reverse("alerts")).status_code == 302
