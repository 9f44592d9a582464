from __future__ import annotations

import socket
from typing import Any

import pytest
from django.core import mail

from budgets import alerts
from budgets.models import AlertChannel
from tests.conftest import Person
from tests.fakes.webhook_server import FakeWebhooks, discord_errors, slack_errors

MESSAGE = alerts.AlertMessage(
    title="Monthly account cap at 80%",
    text="Monthly account cap: 80% reached. $8.00 of $10.00 spent; resets 2026-12-01 00:00 UTC.",
    fields=[("Cap", "Monthly account cap"), ("Spent", "$8.00"), ("Limit", "$10.00")],
    url="https://budgetllm.example.com/dashboard/",
    severity="warning",
)


def test_slack_payload_is_exactly_an_incoming_webhook_body() -> None:
    payload = alerts.slack_payload(MESSAGE)
    assert payload == {
        "text": "Monthly account cap at 80%: Monthly account cap: 80% reached. $8.00 of $10.00 "
        "spent; resets 2026-12-01 00:00 UTC.",
        "blocks": [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": "Monthly account cap at 80%"},
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": MESSAGE.text}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*Cap*\nMonthly account cap"},
                    {"type": "mrkdwn", "text": "*Spent*\n$8.00"},
                    {"type": "mrkdwn", "text": "*Limit*\n$10.00"},
                ],
            },
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open dashboard"},
                        "url": "https://budgetllm.example.com/dashboard/",
                    }
                ],
            },
        ],
    }
    assert slack_errors(payload) is None


def test_discord_payload_is_exactly_an_execute_webhook_body() -> None:
    payload = alerts.discord_payload(MESSAGE)
    assert payload == {
        "username": "BudgetLLM",
        "content": "Monthly account cap at 80%",
        "embeds": [
            {
                "title": "Monthly account cap at 80%",
                "description": MESSAGE.text,
                "color": 0xF59E0B,
                "url": "https://budgetllm.example.com/dashboard/",
                "fields": [
                    {"name": "Cap", "value": "Monthly account cap", "inline": True},
                    {"name": "Spent", "value": "$8.00", "inline": True},
                    {"name": "Limit", "value": "$10.00", "inline": True},
                ],
            }
        ],
        "allowed_mentions": {"parse": []},
    }
    assert discord_errors(payload) is None


def test_user_text_cannot_inject_slack_links_or_discord_pings() -> None:
    hostile = alerts.AlertMessage(title="Key “@everyone <!channel>” paused", text="<http://evil|x>")
    slack = alerts.slack_payload(hostile)
    # plain_text is shown literally; mrkdwn and the notification text are escaped.
    assert slack["blocks"][0]["text"] == {"type": "plain_text", "text": hostile.title}
    assert slack["blocks"][1]["text"]["text"] == "&lt;http://evil|x&gt;"
    assert "<" not in slack["text"]
    assert alerts.discord_payload(hostile)["allowed_mentions"] == {"parse": []}


@pytest.mark.django_db(transaction=True)
def test_slack_and_discord_channels_deliver_to_the_webhook(
    owner: Person, webhooks: FakeWebhooks, pro_plan: None
) -> None:
    alerts.alert_channel_add(account=owner.account, kind="slack", target=webhooks.slack_url())
    alerts.alert_channel_add(account=owner.account, kind="discord", target=webhooks.discord_url())
    sent = alerts.alert_dispatch(account=owner.account, message=MESSAGE)
    assert sent == 3  # owner's email + Slack + Discord
    [slack] = webhooks.hits("/services/")
    [discord] = webhooks.hits("/api/webhooks/")
    assert slack.body == alerts.slack_payload(MESSAGE)
    assert discord.body == alerts.discord_payload(MESSAGE)
    assert slack.headers["Content-Type"] == "application/json"
    assert len(mail.outbox) == 1
    for channel in AlertChannel.objects.all():
        assert channel.last_success_at is not None and not channel.is_failing


@pytest.mark.django_db(transaction=True)
def test_a_failing_channel_retries_with_backoff_and_does_not_block_email(
    owner: Person, webhooks: FakeWebhooks, pro_plan: None, settings: Any
) -> None:
    slack = alerts.alert_channel_add(
        account=owner.account, kind="slack", target=webhooks.slack_url()
    )
    webhooks.fail_next("/services/", 503, times=100)
    alerts.alert_dispatch(account=owner.account, message=MESSAGE)

    # Eager Celery runs the retries at once; a worker would wait 30 s, 60 s, 120 s, …
    assert len(webhooks.hits("/services/")) == settings.ALERT_DELIVERY_MAX_RETRIES + 1
    assert len(mail.outbox) == 1
    slack.refresh_from_db()
    assert slack.is_failing
    assert slack.consecutive_failures == settings.ALERT_DELIVERY_MAX_RETRIES + 1
    assert "Slack answered 503" in slack.last_error

    # The channel recovers on the next successful delivery.
    webhooks.fail_next("/services/", 503, times=0)
    alerts.alert_dispatch(account=owner.account, message=MESSAGE)
    slack.refresh_from_db()
    assert not slack.is_failing and slack.last_error == ""


@pytest.mark.django_db(transaction=True)
def test_a_transient_failure_is_retried_until_it_succeeds(
    owner: Person, webhooks: FakeWebhooks, pro_plan: None
) -> None:
    channel = alerts.alert_channel_add(
        account=owner.account, kind="discord", target=webhooks.discord_url()
    )
    webhooks.fail_next("/api/webhooks/", 429, times=2)
    alerts.alert_dispatch(account=owner.account, message=MESSAGE)
    assert len(webhooks.hits("/api/webhooks/")) == 3
    channel.refresh_from_db()
    assert not channel.is_failing


@pytest.mark.django_db(transaction=True)
def test_a_rejected_payload_is_not_retried(
    owner: Person, webhooks: FakeWebhooks, pro_plan: None
) -> None:
    channel = alerts.alert_channel_add(
        account=owner.account, kind="slack", target=webhooks.slack_url()
    )
    webhooks.fail_next("/services/", 404, times=100)  # webhook deleted in Slack
    alerts.alert_dispatch(account=owner.account, message=MESSAGE)
    assert len(webhooks.hits("/services/")) == 1
    channel.refresh_from_db()
    assert channel.is_failing and "404" in channel.last_error


@pytest.mark.django_db
def test_free_plan_gets_email_only(owner: Person, webhooks: FakeWebhooks) -> None:
    with pytest.raises(alerts.ChannelNotAllowed, match="Pro and Team"):
        alerts.alert_channel_add(account=owner.account, kind="slack", target=webhooks.slack_url())
    channel = alerts.alert_channel_add(
        account=owner.account, kind="email", target="Ops@Example.com"
    )
    assert channel.target == "ops@example.com"


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("slack", "https://hooks.slack.com/services/T0001/B0001/abcdefABCDEF1234"),
        ("slack", "https://hooks.slack.com/triggers/T0001/123/abc"),
        ("discord", "https://discord.com/api/webhooks/123456789/abc-DEF_123"),
        ("discord", "https://discordapp.com/api/webhooks/123456789/abcDEF"),
        ("discord", "https://discord.com/api/v10/webhooks/123456789/abcDEF"),
    ],
)
def test_provider_webhook_urls_are_accepted(kind: str, url: str) -> None:
    assert alerts.webhook_url_validate(kind=kind, url=f"  {url} ") == url


@pytest.mark.parametrize(
    ("kind", "url", "why"),
    [
        ("slack", "http://hooks.slack.com/services/T/B/x", "https"),
        ("slack", "https://hooks.slack.com.evil.com/services/T/B/x", "on hooks.slack.com"),
        ("slack", "https://evil.com/services/T/B/x", "on hooks.slack.com"),
        ("slack", "https://user:pw@hooks.slack.com/services/T/B/x", "exactly"),
        ("slack", "https://hooks.slack.com:8443/services/T/B/x", "exactly"),
        ("slack", "https://hooks.slack.com/api/other", "incoming-webhook"),
        ("slack", "https://discord.com/api/webhooks/1/x", "on hooks.slack.com"),
        ("discord", "https://discord.com/channels/1/2", "incoming-webhook"),
        ("discord", "https://127.0.0.1/api/webhooks/1/x", "discord.com"),
        ("discord", "https://[::1]/api/webhooks/1/x", "discord.com"),
        ("discord", "not a url", "https"),
    ],
)
def test_other_urls_are_refused(kind: str, url: str, why: str) -> None:
    with pytest.raises(alerts.WebhookUrlInvalid, match=why):
        alerts.webhook_url_validate(kind=kind, url=url)


@pytest.mark.django_db(transaction=True)
def test_production_never_honours_test_origins(
    owner: Person, webhooks: FakeWebhooks, pro_plan: None, settings: Any
) -> None:
    channel = alerts.alert_channel_add(
        account=owner.account, kind="slack", target=webhooks.slack_url()
    )
    settings.DEBUG = False
    settings.TESTING = False  # ALERT_WEBHOOK_TEST_ORIGINS still lists the loopback server
    with pytest.raises(alerts.WebhookUrlInvalid, match="https"):
        alerts.webhook_url_validate(kind="slack", url=webhooks.slack_url())
    with pytest.raises(alerts.DeliveryError):
        alerts.alert_deliver(channel=channel, message=MESSAGE)
    assert webhooks.hits("/services/") == []
    channel.refresh_from_db()
    assert channel.is_failing


@pytest.mark.django_db(transaction=True)
def test_a_provider_host_resolving_to_a_private_address_is_never_contacted(
    owner: Person, pro_plan: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS is the outside world: a resolver that answers loopback for hooks.slack.com."""
    channel = AlertChannel.objects.create(
        account=owner.account,
        kind="slack",
        target="https://hooks.slack.com/services/T0001/B0001/abcdefABCDEF1234",
    )
    connects: list[object] = []

    def rebinding_resolver(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_resolver)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: connects.append(a))
    with pytest.raises(alerts.DeliveryError, match="private address") as caught:
        alerts.alert_deliver(channel=channel, message=MESSAGE)
    assert not caught.value.retryable
    assert connects == []


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),  # noqa: S104 - an address under test, nothing binds it
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("2606:4700::1111", True),
    ],
)
def test_only_public_addresses_are_contacted(address: str, public: bool) -> None:
    assert alerts._public_address(address) is public
