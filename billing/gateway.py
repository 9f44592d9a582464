"""The only calls that reach Razorpay's servers: creating and cancelling a subscription.

`razorpay_gateway()` returns the SDK-backed gateway, or with BILLING_CHECKOUT_STANDIN
(development and tests only; settings refuse it when DEBUG is off) a stand-in that
answers with objects shaped like Razorpay's and never touches the network. Signature
checks are not part of the gateway: they run the same code in both modes.
"""

from __future__ import annotations

import secrets
import string
import time
from typing import Any, Protocol

import razorpay
from django.conf import settings


class GatewayError(Exception):
    """Razorpay refused or could not be reached; the message is safe to show."""


class RazorpayGateway(Protocol):
    def subscription_create(
        self, *, plan_id: str, total_count: int, notes: dict[str, str]
    ) -> dict[str, Any]: ...

    def subscription_cancel(
        self, *, subscription_id: str, at_cycle_end: bool
    ) -> dict[str, Any]: ...


def razorpay_client() -> razorpay.Client:
    return razorpay.Client(auth=(settings.RAZORPAY_KEY_ID, settings.RAZORPAY_KEY_SECRET))


class SdkGateway:
    def __init__(self) -> None:
        self.client = razorpay_client()

    def subscription_create(
        self, *, plan_id: str, total_count: int, notes: dict[str, str]
    ) -> dict[str, Any]:
        try:
            return dict(
                self.client.subscription.create(
                    {
                        "plan_id": plan_id,
                        "total_count": total_count,
                        "quantity": 1,
                        "customer_notify": 1,
                        "notes": notes,
                    }
                )
            )
        except Exception as exc:  # the SDK raises requests' and its own errors
            raise GatewayError(f"Razorpay could not create the subscription: {exc}") from exc

    def subscription_cancel(self, *, subscription_id: str, at_cycle_end: bool) -> dict[str, Any]:
        try:
            return dict(
                self.client.subscription.cancel(
                    subscription_id, {"cancel_at_cycle_end": 1 if at_cycle_end else 0}
                )
            )
        except Exception as exc:
            raise GatewayError(f"Razorpay could not cancel the subscription: {exc}") from exc


def razorpay_style_id(prefix: str) -> str:
    """An id like Razorpay's: prefix, underscore, 14 base-62 characters."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "_" + "".join(secrets.choice(alphabet) for _ in range(14))


class StandinGateway:
    """Answers like Razorpay's Subscriptions API, from memory, for development and tests."""

    def subscription_create(
        self, *, plan_id: str, total_count: int, notes: dict[str, str]
    ) -> dict[str, Any]:
        now = int(time.time())
        return {
            "id": razorpay_style_id("sub"),
            "entity": "subscription",
            "plan_id": plan_id,
            "customer_id": None,
            "status": "created",
            "current_start": None,
            "current_end": None,
            "ended_at": None,
            "quantity": 1,
            "notes": notes,
            "charge_at": None,
            "start_at": None,
            "end_at": None,
            "auth_attempts": 0,
            "total_count": total_count,
            "paid_count": 0,
            "customer_notify": True,
            "created_at": now,
            "expire_by": None,
            "short_url": "https://rzp.io/i/standin",
            "has_scheduled_changes": False,
            "change_scheduled_at": None,
            "source": "api",
            "remaining_count": total_count,
        }

    def subscription_cancel(self, *, subscription_id: str, at_cycle_end: bool) -> dict[str, Any]:
        now = int(time.time())
        return {
            "id": subscription_id,
            "entity": "subscription",
            # Cancelling at cycle end leaves the subscription active until then.
            "status": "active" if at_cycle_end else "cancelled",
            "ended_at": None if at_cycle_end else now,
            "has_scheduled_changes": at_cycle_end,
            "change_scheduled_at": None,
        }


def razorpay_gateway() -> RazorpayGateway:
    if settings.BILLING_CHECKOUT_STANDIN:
        return StandinGateway()
    return SdkGateway()
