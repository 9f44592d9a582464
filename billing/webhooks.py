"""Provider webhooks: verify the raw body, store the event once, then act.

The order matters and is the same for both providers:
1. verify the signature over the raw bytes with the webhook secret (before parsing:
   an unverified body is never interpreted);
2. store the event under a unique (provider, event id): a redelivery of an event that
   was handled is answered 200 and does nothing;
3. run the handler in a transaction and record its outcome (started, succeeded,
   failed + error) on the event row, which staff see in the admin. A failed handler
   answers 500 so the provider delivers again; the retry runs the handler again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import razorpay
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Account

from .entitlements import plan_for
from .gateway import razorpay_client
from .models import Payment, Provider, Subscription, WebhookEvent
from .services import (
    plan_for_lemonsqueezy_variant,
    plan_for_razorpay_plan_id,
    subscription_changed,
)
from .state import Transition, transition_allowed, transition_apply

logger = logging.getLogger(__name__)

S = Subscription.Status
HS = WebhookEvent.HandlerStatus


class WebhookRejected(Exception):
    """Not a genuine, well-formed delivery: answered 400 and nothing is stored."""


class EventNotReady(Exception):
    """The event refers to something not known yet (delivered out of order): retry later."""


@dataclass(frozen=True)
class WebhookResult:
    status_code: int
    outcome: str


Handler = Callable[[dict[str, Any]], str]


def webhook_event_process(
    *, provider: str, event_id: str, event_type: str, payload: dict[str, Any], handler: Handler
) -> WebhookResult:
    # Committed on its own first, so a worker dying mid-handler leaves a visible "started".
    event, _ = WebhookEvent.objects.get_or_create(
        provider=provider,
        event_id=event_id,
        defaults={"event_type": event_type, "payload": payload},
    )
    if event.handler_status == HS.SUCCEEDED:
        return WebhookResult(200, "duplicate: already handled")
    with transaction.atomic():
        # The row lock serialises concurrent redeliveries of the same event.
        event = WebhookEvent.objects.select_for_update().get(pk=event.pk)
        if event.handler_status == HS.SUCCEEDED:
            return WebhookResult(200, "duplicate: already handled")
        event.attempts += 1
        event.handler_status = HS.STARTED
        try:
            with transaction.atomic():  # a savepoint: a failing handler changes nothing
                outcome = handler(payload)
        except Exception as exc:
            logger.exception("%s webhook %s (%s) failed", provider, event_id, event_type)
            event.handler_status = HS.FAILED
            event.error = f"{type(exc).__name__}: {exc}"
            result = WebhookResult(500, "handler failed")
        else:
            event.handler_status = HS.SUCCEEDED
            event.outcome = outcome
            event.error = ""
            result = WebhookResult(200, outcome)
        event.handled_at = timezone.now()
        event.save()
    return result


def _json_object(body: str | bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise WebhookRejected("The body is not JSON.") from exc
    if not isinstance(payload, dict):
        raise WebhookRejected("The body is not a JSON object.")
    return payload


def _from_unix(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


def _from_iso(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _account_by_public_id(value: Any) -> Account | None:
    try:
        public_id = uuid.UUID(str(value))
    except ValueError:
        return None
    return Account.objects.filter(public_id=public_id).first()


def _payment_record(
    *,
    account: Account,
    sub: Subscription | None,
    provider: str,
    provider_payment_id: str,
    amount_minor: int,
    currency: str,
    status: str,
    description: str,
    paid_at: datetime | None,
) -> Payment:
    payment, _ = Payment.objects.update_or_create(
        provider=provider,
        provider_payment_id=provider_payment_id,
        defaults={
            "account": account,
            "subscription": sub,
            "amount_minor": int(amount_minor),
            "currency": currency.upper(),
            "status": status,
            "description": description[:200],
            "paid_at": paid_at or timezone.now(),
        },
    )
    return payment


def _apply(sub: Subscription, t: Transition, *, reason: str, plan: str | None = None) -> str:
    """Move `sub` through the state machine and apply any plan change at once."""
    before = plan_for(sub.account)
    allowed, _ = transition_allowed(sub, t)
    if allowed and plan and plan != sub.plan:
        sub.plan = plan
    note = transition_apply(sub, t)
    sub.save()
    changes = subscription_changed(sub=sub, before_plan=before, reason=reason)
    return f"subscription {sub.provider_subscription_id}: {note}" + (
        " | " + " ".join(changes) if changes else ""
    )


# --- Razorpay ------------------------------------------------------------------------------

RAZORPAY_TRANSITIONS: dict[str, tuple[str, str]] = {
    # event: (status, why the plan changes, in words for the user)
    "subscription.authenticated": (S.AUTHENTICATED, "your payment went through"),
    "subscription.activated": (S.ACTIVE, "your subscription is active"),
    "subscription.charged": (S.ACTIVE, "your subscription renewed"),
    "subscription.pending": (S.PENDING, "a renewal payment failed and is being retried"),
    "subscription.halted": (S.HALTED, "Razorpay could not collect the renewal payment"),
    "subscription.cancelled": (S.CANCELLED, "the subscription was cancelled"),
    "subscription.completed": (S.COMPLETED, "the subscription reached its last billing cycle"),
}


def razorpay_webhook_receive(*, raw_body: bytes, signature: str, event_id: str) -> WebhookResult:
    secret = settings.RAZORPAY_WEBHOOK_SECRET
    if not secret:
        raise WebhookRejected("RAZORPAY_WEBHOOK_SECRET is not set.")
    try:
        body = raw_body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookRejected("The body is not UTF-8.") from exc
    if not signature:
        raise WebhookRejected("X-Razorpay-Signature is missing.")
    try:
        # The SDK wants the body as str: the exact bytes received, never re-serialised.
        razorpay_client().utility.verify_webhook_signature(body, signature, secret)
    except razorpay.errors.SignatureVerificationError as exc:
        raise WebhookRejected("X-Razorpay-Signature does not match.") from exc
    payload = _json_object(body)
    event_type = payload.get("event")
    if not isinstance(event_type, str) or not isinstance(payload.get("payload"), dict):
        raise WebhookRejected("Not a Razorpay event.")
    if not event_id:
        raise WebhookRejected("X-Razorpay-Event-Id is missing.")
    return webhook_event_process(
        provider=Provider.RAZORPAY,
        event_id=event_id,
        event_type=event_type,
        payload=payload,
        handler=_razorpay_handle,
    )


def _razorpay_subscription(entity: dict[str, Any]) -> Subscription | None:
    sub_id = str(entity.get("id", ""))
    sub = (
        Subscription.objects.select_for_update()
        .select_related("account")
        .filter(provider=Provider.RAZORPAY, provider_subscription_id=sub_id)
        .first()
    )
    if sub is not None:
        return sub
    # Not created through our billing page (or our row is gone): the notes we set at
    # creation still name the account.
    notes = entity.get("notes") if isinstance(entity.get("notes"), dict) else {}
    account = _account_by_public_id((notes or {}).get("account_public_id"))
    plan = plan_for_razorpay_plan_id(str(entity.get("plan_id", "")))
    if account is None or plan is None:
        return None
    return Subscription.objects.create(
        account=account, provider=Provider.RAZORPAY, provider_subscription_id=sub_id, plan=plan
    )


def _razorpay_handle(payload: dict[str, Any]) -> str:
    event_type = payload["event"]
    if event_type == "payment.failed":
        return _razorpay_payment_failed(payload)
    if event_type not in RAZORPAY_TRANSITIONS:
        return f"ignored: {event_type} is not an event we act on"
    entity = payload["payload"]["subscription"]["entity"]
    sub = _razorpay_subscription(entity)
    if sub is None:
        return f"ignored: subscription {entity.get('id')} is not linked to an account"
    status, reason = RAZORPAY_TRANSITIONS[event_type]
    if entity.get("customer_id"):
        sub.provider_customer_id = str(entity["customer_id"])[:64]
    if event_type == "subscription.charged" and "payment" in payload["payload"]:
        pay = payload["payload"]["payment"]["entity"]
        _payment_record(
            account=sub.account,
            sub=sub,
            provider=Provider.RAZORPAY,
            provider_payment_id=str(pay["id"]),
            amount_minor=pay["amount"],
            currency=pay["currency"],
            status=Payment.Status.CAPTURED,
            description=f"{sub.plan.title()} plan",
            paid_at=_from_unix(pay.get("created_at")),
        )
    t = Transition(
        status=status,
        event_at=_from_unix(payload["created_at"]) or timezone.now(),
        current_period_end=_from_unix(entity.get("current_end")),
    )
    return _apply(sub, t, reason=reason)


def _razorpay_payment_failed(payload: dict[str, Any]) -> str:
    pay = payload["payload"]["payment"]["entity"]
    notes = pay.get("notes") if isinstance(pay.get("notes"), dict) else {}
    subs = Subscription.objects.filter(provider=Provider.RAZORPAY).order_by("-created_at")
    sub = None
    if pay.get("subscription_id"):
        sub = subs.filter(provider_subscription_id=str(pay["subscription_id"])).first()
    if sub is None and pay.get("customer_id"):
        sub = subs.filter(provider_customer_id=str(pay["customer_id"])).first()
    account = sub.account if sub else _account_by_public_id((notes or {}).get("account_public_id"))
    if account is None:
        return f"ignored: payment {pay.get('id')} is not linked to an account"
    _payment_record(
        account=account,
        sub=sub,
        provider=Provider.RAZORPAY,
        provider_payment_id=str(pay["id"]),
        amount_minor=pay["amount"],
        currency=pay["currency"],
        status=Payment.Status.FAILED,
        description=str(pay.get("error_description") or "Payment failed"),
        paid_at=_from_unix(pay.get("created_at")),
    )
    # The subscription's own state moves with subscription.pending / halted.
    return f"payment {pay['id']} failed: recorded"


# --- LemonSqueezy ----------------------------------------------------------------------

LEMONSQUEEZY_SUBSCRIPTION_EVENTS = {
    "subscription_created": "your subscription started",
    "subscription_updated": "your subscription changed",
    "subscription_resumed": "your subscription was resumed",
    "subscription_cancelled": "the subscription was cancelled",
    "subscription_expired": "the subscription ended",
}
LEMONSQUEEZY_STATUS = {
    "on_trial": S.ACTIVE,
    "active": S.ACTIVE,
    # Cancelled in LemonSqueezy = cancelled at period end: the plan lasts until ends_at.
    "cancelled": S.ACTIVE,
    "past_due": S.PENDING,
    "unpaid": S.HALTED,
    "paused": S.HALTED,
    "expired": S.EXPIRED,
}


def lemonsqueezy_signature(raw_body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()


def lemonsqueezy_webhook_receive(*, raw_body: bytes, signature: str) -> WebhookResult:
    secret = settings.LEMONSQUEEZY_WEBHOOK_SECRET
    if not secret:
        raise WebhookRejected("LEMONSQUEEZY_WEBHOOK_SECRET is not set.")
    if not signature or not hmac.compare_digest(
        lemonsqueezy_signature(raw_body, secret), signature
    ):
        raise WebhookRejected("X-Signature does not match.")
    payload = _json_object(raw_body)
    meta, data = payload.get("meta"), payload.get("data")
    if not isinstance(meta, dict) or not isinstance(data, dict):
        raise WebhookRejected("Not a LemonSqueezy event.")
    attributes = data.get("attributes")
    event_name = meta.get("event_name")
    if not isinstance(event_name, str) or not isinstance(attributes, dict):
        raise WebhookRejected("Not a LemonSqueezy event.")
    # No delivery id: one event name on one state (updated_at) of one object is one event.
    event_id = f"{event_name}:{data.get('type')}:{data.get('id')}:{attributes.get('updated_at')}"
    return webhook_event_process(
        provider=Provider.LEMONSQUEEZY,
        event_id=event_id,
        event_type=event_name,
        payload=payload,
        handler=_lemonsqueezy_handle,
    )


def _lemonsqueezy_handle(payload: dict[str, Any]) -> str:
    event_name = payload["meta"]["event_name"]
    if event_name in LEMONSQUEEZY_SUBSCRIPTION_EVENTS:
        return _lemonsqueezy_subscription_event(payload)
    if event_name in (
        "subscription_payment_success",
        "subscription_payment_recovered",
        "subscription_payment_failed",
    ):
        return _lemonsqueezy_payment_event(payload)
    return f"ignored: {event_name} is not an event we act on"


def _lemonsqueezy_subscription_event(payload: dict[str, Any]) -> str:
    event_name = payload["meta"]["event_name"]
    data = payload["data"]
    attrs = data["attributes"]
    ls_status = str(attrs["status"])
    if ls_status not in LEMONSQUEEZY_STATUS:
        return f"ignored: unknown subscription status {ls_status}"
    plan = plan_for_lemonsqueezy_variant(str(attrs.get("variant_id", "")))
    sub = (
        Subscription.objects.select_for_update()
        .select_related("account")
        .filter(provider=Provider.LEMONSQUEEZY, provider_subscription_id=str(data["id"]))
        .first()
    )
    if sub is None:
        custom = payload["meta"].get("custom_data") or {}
        account = _account_by_public_id(
            custom.get("account_id") if isinstance(custom, dict) else None
        )
        if account is None:
            return f"ignored: subscription {data['id']} has no account_id in custom data"
        if plan is None:
            return f"ignored: variant {attrs.get('variant_id')} is not a plan of ours"
        sub = Subscription.objects.create(
            account=account,
            provider=Provider.LEMONSQUEEZY,
            provider_subscription_id=str(data["id"]),
            plan=plan,
        )
    urls = attrs.get("urls") or {}
    if isinstance(urls, dict) and urls.get("customer_portal"):
        sub.manage_url = str(urls["customer_portal"])[:500]
    ending = ls_status in ("cancelled", "expired")
    t = Transition(
        status=LEMONSQUEEZY_STATUS[ls_status],
        event_at=_from_iso(attrs.get("updated_at")) or timezone.now(),
        current_period_end=_from_iso(attrs.get("ends_at") if ending else attrs.get("renews_at")),
        cancel_at_period_end=ls_status == "cancelled",
    )
    reason = LEMONSQUEEZY_SUBSCRIPTION_EVENTS[event_name]
    if ls_status in ("unpaid", "paused"):
        reason = "LemonSqueezy could not collect the renewal payment"
    return _apply(sub, t, reason=reason, plan=plan)


def _lemonsqueezy_payment_event(payload: dict[str, Any]) -> str:
    event_name = payload["meta"]["event_name"]
    data = payload["data"]
    attrs = data["attributes"]
    sub = (
        Subscription.objects.select_for_update()
        .select_related("account")
        .filter(
            provider=Provider.LEMONSQUEEZY,
            provider_subscription_id=str(attrs.get("subscription_id")),
        )
        .first()
    )
    if sub is None:
        # Arrived before subscription_created: fail so LemonSqueezy delivers it again.
        raise EventNotReady(f"subscription {attrs.get('subscription_id')} is not known yet")
    failed = event_name == "subscription_payment_failed"
    _payment_record(
        account=sub.account,
        sub=sub,
        provider=Provider.LEMONSQUEEZY,
        provider_payment_id=f"invoice:{data['id']}",
        amount_minor=attrs["total"],
        currency=str(attrs["currency"]),
        status=Payment.Status.FAILED if failed else Payment.Status.CAPTURED,
        description=f"{sub.plan.title()} plan ({attrs.get('billing_reason', 'payment')})",
        paid_at=_from_iso(attrs.get("created_at")),
    )
    if failed or sub.status not in (S.PENDING, S.HALTED):
        # A failure's state change arrives as subscription_updated (past_due/unpaid).
        return f"payment invoice:{data['id']} recorded ({'failed' if failed else 'paid'})"
    t = Transition(status=S.ACTIVE, event_at=_from_iso(attrs.get("updated_at")) or timezone.now())
    return _apply(sub, t, reason="your payment went through")
