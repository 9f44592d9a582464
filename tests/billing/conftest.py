from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from . import payloads as p


@pytest.fixture(autouse=True)
def billing_settings(settings) -> Any:  # type: ignore[no-untyped-def]
    """Test credentials for both providers; the stand-in gateway (no network)."""
    settings.BILLING_CHECKOUT_STANDIN = True
    settings.RAZORPAY_KEY_ID = "rzp_test_key_id"
    settings.RAZORPAY_KEY_SECRET = p.RAZORPAY_KEY_SECRET
    settings.RAZORPAY_WEBHOOK_SECRET = p.RAZORPAY_WEBHOOK_SECRET
    settings.RAZORPAY_PLAN_PRO = p.RAZORPAY_PLAN_PRO
    settings.RAZORPAY_PLAN_TEAM = p.RAZORPAY_PLAN_TEAM
    settings.LEMONSQUEEZY_STORE_URL = "https://budgetllm.lemonsqueezy.com"
    settings.LEMONSQUEEZY_VARIANT_PRO = p.LS_VARIANT_PRO
    settings.LEMONSQUEEZY_VARIANT_TEAM = p.LS_VARIANT_TEAM
    settings.LEMONSQUEEZY_WEBHOOK_SECRET = p.LEMONSQUEEZY_WEBHOOK_SECRET
    return settings


def post_razorpay(
    payload: dict[str, Any] | bytes,
    *,
    event_id: str,
    secret: str = p.RAZORPAY_WEBHOOK_SECRET,
    signature: str | None = None,
) -> Any:
    body = payload if isinstance(payload, bytes) else p.body_bytes(payload)
    return Client().post(
        reverse("billing:razorpay_webhook"),
        data=body,
        content_type="application/json",
        headers={
            "X-Razorpay-Signature": signature if signature is not None else p.sign(body, secret),
            "X-Razorpay-Event-Id": event_id,
        },
    )


def post_lemonsqueezy(
    payload: dict[str, Any] | bytes,
    *,
    secret: str = p.LEMONSQUEEZY_WEBHOOK_SECRET,
    signature: str | None = None,
) -> Any:
    body = payload if isinstance(payload, bytes) else p.body_bytes(payload)
    event_name = "" if isinstance(payload, bytes) else payload["meta"]["event_name"]
    return Client().post(
        reverse("billing:lemonsqueezy_webhook"),
        data=body,
        content_type="application/json",
        headers={
            "X-Signature": signature if signature is not None else p.sign(body, secret),
            "X-Event-Name": event_name,
        },
    )
