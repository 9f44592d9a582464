from __future__ import annotations

from datetime import UTC, datetime, timedelta

import time_machine
from django.core import mail

from billing.entitlements import plan_for
from billing.models import Payment, Subscription, WebhookEvent
from billing.services import subscriptions_lapse
from keys.models import ApiKey

from . import payloads as p
from .conftest import post_lemonsqueezy
from .factories import api_key, provider_key

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SUB = "7001"


def created(owner, *, at: datetime = T0, variant: str = p.LS_VARIANT_PRO) -> dict:
    return p.ls_subscription_event(
        "subscription_created",
        sub_id=SUB,
        status="active",
        updated_at=at,
        account_public_id=str(owner.account.public_id),
        variant_id=variant,
        renews_at=at + timedelta(days=30),
    )


def test_subscription_created_grants_the_plan_from_custom_data(owner) -> None:
    response = post_lemonsqueezy(created(owner))
    assert response.status_code == 200
    sub = Subscription.objects.get()
    assert (sub.account, sub.provider, sub.plan, sub.status) == (
        owner.account,
        "lemonsqueezy",
        "pro",
        "active",
    )
    assert sub.current_period_end == T0 + timedelta(days=30)
    assert sub.manage_url.startswith("https://budgetllm.lemonsqueezy.com/billing")
    assert plan_for(owner.account) == "pro"


def test_forged_signature_is_refused_and_changes_nothing(owner) -> None:
    response = post_lemonsqueezy(created(owner), secret="wrong")
    assert response.status_code == 400
    assert not Subscription.objects.exists()
    assert not WebhookEvent.objects.exists()


def test_missing_signature_is_refused(owner) -> None:
    assert post_lemonsqueezy(created(owner), signature="").status_code == 400


def test_redelivery_is_a_200_no_op(owner) -> None:
    body = created(owner)
    assert post_lemonsqueezy(body).status_code == 200
    assert post_lemonsqueezy(body).status_code == 200
    assert Subscription.objects.count() == 1
    assert WebhookEvent.objects.get().attempts == 1


def test_payment_success_records_the_payment_once(owner) -> None:
    post_lemonsqueezy(created(owner))
    invoice = p.ls_invoice_event(
        "subscription_payment_success", invoice_id="9001", sub_id=SUB, updated_at=T0
    )
    assert post_lemonsqueezy(invoice).status_code == 200
    assert post_lemonsqueezy(invoice).status_code == 200
    payment = Payment.objects.get()
    assert (payment.amount_minor, payment.currency, payment.status) == (1_900, "USD", "captured")
    assert payment.provider_payment_id == "invoice:9001"


def test_payment_before_its_subscription_fails_then_succeeds_on_redelivery(owner) -> None:
    invoice = p.ls_invoice_event(
        "subscription_payment_success", invoice_id="9002", sub_id=SUB, updated_at=T0
    )
    first = post_lemonsqueezy(invoice)
    assert first.status_code == 500  # LemonSqueezy delivers it again
    event = WebhookEvent.objects.get()
    assert event.handler_status == "failed"
    assert "not known yet" in event.error
    post_lemonsqueezy(created(owner))
    assert post_lemonsqueezy(invoice).status_code == 200
    event.refresh_from_db()
    assert (event.handler_status, event.attempts, event.error) == ("succeeded", 2, "")
    assert Payment.objects.count() == 1


def test_payment_failed_is_recorded_and_past_due_keeps_the_plan(owner) -> None:
    post_lemonsqueezy(created(owner))
    failed = p.ls_invoice_event(
        "subscription_payment_failed",
        invoice_id="9003",
        sub_id=SUB,
        updated_at=T0 + timedelta(days=30),
        status="pending",
    )
    past_due = p.ls_subscription_event(
        "subscription_updated",
        sub_id=SUB,
        status="past_due",
        updated_at=T0 + timedelta(days=30, minutes=1),
    )
    assert post_lemonsqueezy(failed).status_code == 200
    assert post_lemonsqueezy(past_due).status_code == 200
    assert Payment.objects.get().status == "failed"
    assert Subscription.objects.get().status == "pending"
    assert plan_for(owner.account) == "pro"


def test_events_out_of_order_never_move_the_subscription_back(owner) -> None:
    post_lemonsqueezy(created(owner))
    expired = p.ls_subscription_event(
        "subscription_expired",
        sub_id=SUB,
        status="expired",
        updated_at=T0 + timedelta(days=40),
        ends_at=T0 + timedelta(days=40),
    )
    stale = p.ls_subscription_event(
        "subscription_updated",
        sub_id=SUB,
        status="active",
        updated_at=T0 + timedelta(days=10),
        renews_at=T0 + timedelta(days=30),
    )
    post_lemonsqueezy(expired)
    assert post_lemonsqueezy(stale).status_code == 200
    assert Subscription.objects.get().status == "expired"
    assert plan_for(owner.account) == "free"


def test_variant_change_changes_the_plan_at_once(owner) -> None:
    post_lemonsqueezy(created(owner))
    upgraded = p.ls_subscription_event(
        "subscription_updated",
        sub_id=SUB,
        status="active",
        updated_at=T0 + timedelta(days=1),
        variant_id=p.LS_VARIANT_TEAM,
        renews_at=T0 + timedelta(days=30),
    )
    post_lemonsqueezy(upgraded)
    assert plan_for(owner.account) == "team"


def test_cancelled_keeps_the_plan_until_ends_at_then_downgrades(
    owner, django_capture_on_commit_callbacks
) -> None:
    post_lemonsqueezy(created(owner))
    pk = provider_key(owner.account, 1)
    keys = [api_key(owner.account, pk, n) for n in range(3)]
    ends = datetime.now(UTC) + timedelta(days=5)
    cancelled = p.ls_subscription_event(
        "subscription_cancelled",
        sub_id=SUB,
        status="cancelled",
        updated_at=T0 + timedelta(days=2),
        ends_at=ends,
    )
    assert post_lemonsqueezy(cancelled).status_code == 200
    sub = Subscription.objects.get()
    assert sub.cancel_at_period_end and sub.current_period_end == ends.replace(microsecond=0)
    assert plan_for(owner.account) == "pro"
    assert ApiKey.objects.filter(disabled_at__isnull=True).count() == 3
    with (
        time_machine.travel(ends + timedelta(minutes=1)),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert plan_for(owner.account) == "free"
        assert subscriptions_lapse() == 1
    assert ApiKey.objects.filter(disabled_at__isnull=True).count() == 1
    assert ApiKey.objects.count() == len(keys)
    assert len(mail.outbox) == 1
    # The expired webhook that follows does not notify again.
    expired = p.ls_subscription_event(
        "subscription_expired",
        sub_id=SUB,
        status="expired",
        updated_at=T0 + timedelta(days=40),
        ends_at=ends,
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert post_lemonsqueezy(expired).status_code == 200
    assert len(mail.outbox) == 1


def test_resumed_after_cancel_keeps_renewing(owner) -> None:
    post_lemonsqueezy(created(owner))
    post_lemonsqueezy(
        p.ls_subscription_event(
            "subscription_cancelled",
            sub_id=SUB,
            status="cancelled",
            updated_at=T0 + timedelta(days=2),
            ends_at=T0 + timedelta(days=30),
        )
    )
    post_lemonsqueezy(
        p.ls_subscription_event(
            "subscription_resumed",
            sub_id=SUB,
            status="active",
            updated_at=T0 + timedelta(days=3),
            renews_at=T0 + timedelta(days=30),
        )
    )
    assert Subscription.objects.get().cancel_at_period_end is False


def test_unknown_event_answers_200(owner) -> None:
    order = p.ls_subscription_event("order_created", sub_id="1", status="active", updated_at=T0)
    response = post_lemonsqueezy(order)
    assert response.status_code == 200
    assert WebhookEvent.objects.get().outcome.startswith("ignored")


def test_malformed_body_is_refused(db) -> None:
    assert post_lemonsqueezy(b"not json").status_code == 400
    assert post_lemonsqueezy(b'{"meta": {}}').status_code == 400
    assert not WebhookEvent.objects.exists()


def test_subscription_without_account_custom_data_is_ignored(db) -> None:
    event = p.ls_subscription_event(
        "subscription_created", sub_id="8001", status="active", updated_at=T0
    )
    assert post_lemonsqueezy(event).status_code == 200
    assert not Subscription.objects.exists()
