from __future__ import annotations

import pytest
from django.core import mail

from billing.entitlements import plan_for
from billing.models import Payment, Subscription, WebhookEvent
from keys.models import ApiKey, ProviderKey

from . import payloads as p
from .conftest import post_razorpay
from .factories import api_key, provider_key

SUB = "sub_Rzp00000000001"
T0 = 1_767_225_600  # 2026-01-01 00:00 UTC


@pytest.fixture
def created_sub(owner) -> Subscription:
    """A subscription our billing page created (status created, awaiting checkout)."""
    return Subscription.objects.create(
        account=owner.account, provider="razorpay", provider_subscription_id=SUB, plan="pro"
    )


def charged(at: int = T0 + 60, pay_id: str = "pay_Test0000000001") -> dict:
    return p.rzp_event(
        "subscription.charged",
        subscription=p.rzp_subscription(
            sub_id=SUB, status="active", current_start=T0, current_end=T0 + 30 * 86400, paid_count=1
        ),
        payment=p.rzp_payment(pay_id=pay_id, created_at=at - 5),
        created_at=at,
    )


def test_signed_charged_event_activates_pro_and_records_the_payment(owner, created_sub) -> None:
    response = post_razorpay(charged(), event_id="evt_charged_1")
    assert response.status_code == 200
    created_sub.refresh_from_db()
    assert created_sub.status == Subscription.Status.ACTIVE
    assert created_sub.current_period_end.timestamp() == T0 + 30 * 86400
    assert plan_for(owner.account) == "pro"
    payment = Payment.objects.get()
    assert (payment.amount_minor, payment.currency, payment.status) == (159_900, "INR", "captured")
    event = WebhookEvent.objects.get()
    assert (event.provider, event.event_id, event.handler_status) == (
        "razorpay",
        "evt_charged_1",
        "succeeded",
    )


def test_forged_signature_is_refused_and_changes_nothing(owner, created_sub) -> None:
    response = post_razorpay(charged(), event_id="evt_forged", secret="not-the-secret")
    assert response.status_code == 400
    created_sub.refresh_from_db()
    assert created_sub.status == Subscription.Status.CREATED
    assert not Payment.objects.exists()
    assert not WebhookEvent.objects.exists()


def test_signature_under_the_api_key_secret_is_not_the_webhook_secret(owner, created_sub) -> None:
    response = post_razorpay(charged(), event_id="evt_keysecret", secret=p.RAZORPAY_KEY_SECRET)
    assert response.status_code == 400
    assert plan_for(owner.account) == "free"


def test_body_altered_after_signing_is_refused(owner, created_sub) -> None:
    body = p.body_bytes(charged())
    signature = p.sign(body, p.RAZORPAY_WEBHOOK_SECRET)
    tampered = body.replace(b"159900", b"100")
    response = post_razorpay(tampered, event_id="evt_tampered", signature=signature)
    assert response.status_code == 400
    assert not Payment.objects.exists()


def test_missing_signature_is_refused(owner, created_sub) -> None:
    assert post_razorpay(charged(), event_id="evt_nosig", signature="").status_code == 400


def test_redelivery_answers_200_and_applies_nothing_twice(owner, created_sub) -> None:
    first = post_razorpay(charged(), event_id="evt_same")
    again = post_razorpay(charged(), event_id="evt_same")
    assert (first.status_code, again.status_code) == (200, 200)
    assert Payment.objects.count() == 1
    event = WebhookEvent.objects.get()
    assert event.attempts == 1
    assert b"duplicate" in again.content


def test_events_out_of_order_never_move_the_subscription_back(owner, created_sub) -> None:
    authenticated = p.rzp_event(
        "subscription.authenticated",
        subscription=p.rzp_subscription(sub_id=SUB, status="authenticated"),
        created_at=T0,
    )
    # Charged (later) arrives first, then the earlier authenticated event.
    assert post_razorpay(charged(at=T0 + 60), event_id="evt_2").status_code == 200
    assert post_razorpay(authenticated, event_id="evt_1").status_code == 200
    created_sub.refresh_from_db()
    assert created_sub.status == Subscription.Status.ACTIVE
    assert "older than the last event" in WebhookEvent.objects.get(event_id="evt_1").outcome


def test_cancelled_is_final_even_if_an_older_charge_arrives_later(owner, created_sub) -> None:
    cancelled = p.rzp_event(
        "subscription.cancelled",
        subscription=p.rzp_subscription(sub_id=SUB, status="cancelled"),
        created_at=T0 + 120,
    )
    post_razorpay(charged(at=T0 + 60, pay_id="pay_A"), event_id="evt_a")
    post_razorpay(cancelled, event_id="evt_c")
    post_razorpay(charged(at=T0 + 90, pay_id="pay_B"), event_id="evt_b")
    created_sub.refresh_from_db()
    assert created_sub.status == Subscription.Status.CANCELLED
    assert plan_for(owner.account) == "free"
    # The late charge is still a payment that happened: it is on record.
    assert Payment.objects.filter(provider_payment_id="pay_B").exists()


def test_same_instant_events_only_move_forward(owner, created_sub) -> None:
    halted = p.rzp_event(
        "subscription.halted",
        subscription=p.rzp_subscription(sub_id=SUB, status="halted"),
        created_at=T0 + 60,
    )
    post_razorpay(halted, event_id="evt_h")
    post_razorpay(charged(at=T0 + 60), event_id="evt_ch")
    created_sub.refresh_from_db()
    assert created_sub.status == Subscription.Status.HALTED


def test_halted_after_a_later_reactivation_is_applied_in_time_order(owner, created_sub) -> None:
    halted = p.rzp_event(
        "subscription.halted",
        subscription=p.rzp_subscription(sub_id=SUB, status="halted"),
        created_at=T0 + 60,
    )
    activated = p.rzp_event(
        "subscription.activated",
        subscription=p.rzp_subscription(sub_id=SUB, status="active"),
        created_at=T0 + 120,
    )
    post_razorpay(halted, event_id="evt_h")
    post_razorpay(activated, event_id="evt_act")
    created_sub.refresh_from_db()
    assert created_sub.status == Subscription.Status.ACTIVE


def test_unknown_event_type_answers_200_and_is_recorded_as_ignored(owner, created_sub) -> None:
    event = p.rzp_event(
        "subscription.updated",
        subscription=p.rzp_subscription(sub_id=SUB, status="active"),
        created_at=T0,
    )
    response = post_razorpay(event, event_id="evt_upd")
    assert response.status_code == 200
    created_sub.refresh_from_db()
    assert created_sub.status == Subscription.Status.CREATED
    stored = WebhookEvent.objects.get()
    assert stored.handler_status == "succeeded"
    assert stored.outcome.startswith("ignored")


def test_malformed_body_is_refused_even_when_signed(owner) -> None:
    assert post_razorpay(b"{not json", event_id="evt_bad").status_code == 400
    assert post_razorpay(b"[1, 2]", event_id="evt_list").status_code == 400
    assert post_razorpay(b'{"event": "x"}', event_id="evt_shape").status_code == 400
    assert not WebhookEvent.objects.exists()


def test_event_without_event_id_header_is_refused(owner, created_sub) -> None:
    assert post_razorpay(charged(), event_id="").status_code == 400


def test_subscription_unknown_to_us_is_linked_through_its_notes(owner) -> None:
    event = p.rzp_event(
        "subscription.activated",
        subscription=p.rzp_subscription(
            sub_id="sub_FromNotes00001",
            status="active",
            account_public_id=str(owner.account.public_id),
        ),
        created_at=T0,
    )
    assert post_razorpay(event, event_id="evt_notes").status_code == 200
    assert plan_for(owner.account) == "pro"


def test_subscription_linked_to_no_account_is_ignored_with_200(db) -> None:
    event = p.rzp_event(
        "subscription.activated",
        subscription=p.rzp_subscription(sub_id="sub_Nobody000001", status="active"),
        created_at=T0,
    )
    response = post_razorpay(event, event_id="evt_nobody")
    assert response.status_code == 200
    assert not Subscription.objects.exists()


def test_payment_failed_is_recorded_for_the_account(owner, created_sub) -> None:
    pay = p.rzp_payment(pay_id="pay_Failed00000001", status="failed")
    pay["notes"] = {"account_public_id": str(owner.account.public_id)}
    response = post_razorpay(
        p.rzp_event("payment.failed", payment=pay, created_at=T0), event_id="evt_pf"
    )
    assert response.status_code == 200
    failed = Payment.objects.get()
    assert failed.status == "failed"
    assert "declined" in failed.description


def test_halted_subscription_downgrades_without_deleting_and_tells_the_user(
    owner, created_sub, django_capture_on_commit_callbacks
) -> None:
    post_razorpay(charged(), event_id="evt_ok")
    pks = [provider_key(owner.account, n) for n in range(3)]
    keys = [api_key(owner.account, pks[0], n) for n in range(4)]
    halted = p.rzp_event(
        "subscription.halted",
        subscription=p.rzp_subscription(sub_id=SUB, status="halted"),
        created_at=T0 + 999,
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert post_razorpay(halted, event_id="evt_halt").status_code == 200
    assert ProviderKey.objects.filter(account=owner.account).count() == 3
    assert ApiKey.objects.filter(account=owner.account).count() == 4
    assert ProviderKey.objects.filter(account=owner.account, disabled_at__isnull=True).count() == 1
    assert ApiKey.objects.filter(account=owner.account, disabled_at__isnull=True).count() == 1
    assert len(keys) == 4
    assert len(mail.outbox) == 1
    assert "Pro to Free" in mail.outbox[0].body
    assert "could not collect" in mail.outbox[0].body
    # Redelivering the halt does not notify twice.
    with django_capture_on_commit_callbacks(execute=True):
        post_razorpay(halted, event_id="evt_halt")
    assert len(mail.outbox) == 1


def test_payment_failed_is_linked_through_the_subscriptions_customer(owner, created_sub) -> None:
    post_razorpay(charged(), event_id="evt_ok")  # carries customer_id cust_Test00000000001
    pay = p.rzp_payment(pay_id="pay_Failed00000002", status="failed", created_at=T0 + 40 * 86400)
    response = post_razorpay(
        p.rzp_event("payment.failed", payment=pay, created_at=T0 + 40 * 86400), event_id="evt_pf2"
    )
    assert response.status_code == 200
    failed = Payment.objects.get(provider_payment_id="pay_Failed00000002")
    assert (failed.account, failed.subscription, failed.status) == (
        owner.account,
        created_sub,
        "failed",
    )


def test_staff_see_webhook_events_and_their_outcome_in_admin(owner, created_sub, client) -> None:
    from accounts.models import User

    post_razorpay(charged(), event_id="evt_admin")
    staff = User.objects.create_user(email="staff@example.com", is_staff=True, is_superuser=True)
    client.force_login(staff, backend="allauth.account.auth_backends.AuthenticationBackend")
    page = client.get("/admin/billing/webhookevent/")
    assert page.status_code == 200
    assert b"evt_admin" in page.content and b"succeeded" in page.content.lower()
    assert owner.client.get("/admin/billing/webhookevent/").status_code == 302
