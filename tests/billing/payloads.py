"""Webhook deliveries shaped exactly like the providers' documented samples.

Razorpay: https://razorpay.com/docs/webhooks/subscriptions/ (an "event" envelope with
`contains`, `payload.subscription.entity` and, when a payment was attempted,
`payload.payment.entity`; `created_at` in Unix seconds). LemonSqueezy:
https://docs.lemonsqueezy.com/help/webhooks (JSON:API `data` with `attributes`,
`meta.event_name` and `meta.custom_data`). Signed here with the test secrets, the way the
providers sign them, and posted as raw bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

RAZORPAY_WEBHOOK_SECRET = "whsec_test_razorpay"
RAZORPAY_KEY_SECRET = "rzp_test_key_secret"
LEMONSQUEEZY_WEBHOOK_SECRET = "ls_test_signing_secret"
RAZORPAY_PLAN_PRO = "plan_TestPro000001"
RAZORPAY_PLAN_TEAM = "plan_TestTeam00001"
LS_VARIANT_PRO = "401"
LS_VARIANT_TEAM = "402"


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body_bytes(payload: dict[str, Any]) -> bytes:
    # Razorpay's bodies are compact JSON; any bytes work as long as we sign those bytes.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def rzp_subscription(
    *,
    sub_id: str,
    status: str,
    account_public_id: str = "",
    plan_id: str = RAZORPAY_PLAN_PRO,
    current_start: int | None = None,
    current_end: int | None = None,
    paid_count: int = 0,
    created_at: int = 1_767_225_600,
) -> dict[str, Any]:
    return {
        "id": sub_id,
        "entity": "subscription",
        "plan_id": plan_id,
        "customer_id": "cust_Test00000000001",
        "status": status,
        "type": 3,
        "current_start": current_start,
        "current_end": current_end,
        "ended_at": None,
        "quantity": 1,
        "notes": {"account_public_id": account_public_id, "plan": "pro"}
        if account_public_id
        else [],
        "charge_at": current_end,
        "start_at": current_start,
        "end_at": 2_082_758_400,
        "auth_attempts": 0,
        "total_count": 120,
        "paid_count": paid_count,
        "customer_notify": True,
        "created_at": created_at,
        "expire_by": None,
        "short_url": None,
        "has_scheduled_changes": False,
        "change_scheduled_at": None,
        "source": "api",
        "payment_method": "upi",
        "offer_id": None,
        "remaining_count": 120 - paid_count,
    }


def rzp_payment(
    *, pay_id: str, amount: int = 159_900, status: str = "captured", created_at: int = 1_767_225_660
) -> dict[str, Any]:
    failed = status == "failed"
    return {
        "id": pay_id,
        "entity": "payment",
        "amount": amount,
        "currency": "INR",
        "status": status,
        "order_id": "order_Test0000000001",
        "invoice_id": "inv_Test00000000001",
        "international": False,
        "method": "upi",
        "amount_refunded": 0,
        "amount_transferred": 0,
        "refund_status": None,
        "captured": not failed,
        "description": "BudgetLLM Pro",
        "card_id": None,
        "bank": None,
        "wallet": None,
        "vpa": "ravi@okicici",
        "email": "ravi@example.com",
        "contact": "+919876543210",
        "customer_id": "cust_Test00000000001",
        "token_id": "token_Test000000001",
        "notes": [],
        "fee": 0 if failed else 3_774,
        "tax": 0 if failed else 576,
        "error_code": "BAD_REQUEST_ERROR" if failed else None,
        "error_description": "Payment was declined by the bank." if failed else None,
        "error_source": "bank" if failed else None,
        "error_step": "payment_authorization" if failed else None,
        "error_reason": "payment_declined" if failed else None,
        "acquirer_data": {"rrn": "123456789012"},
        "created_at": created_at,
    }


def rzp_event(
    event: str,
    *,
    subscription: dict[str, Any] | None = None,
    payment: dict[str, Any] | None = None,
    created_at: int,
) -> dict[str, Any]:
    contains = []
    payload: dict[str, Any] = {}
    if subscription is not None:
        contains.append("subscription")
        payload["subscription"] = {"entity": subscription}
    if payment is not None:
        contains.append("payment")
        payload["payment"] = {"entity": payment}
    return {
        "entity": "event",
        "account_id": "acc_Test0000000001",
        "event": event,
        "contains": contains,
        "payload": payload,
        "created_at": created_at,
    }


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def ls_subscription_event(
    event_name: str,
    *,
    sub_id: str,
    status: str,
    updated_at: datetime,
    account_public_id: str | None = None,
    variant_id: str = LS_VARIANT_PRO,
    renews_at: datetime | None = None,
    ends_at: datetime | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "test_mode": True,
        "event_name": event_name,
        "webhook_id": "7b5f5c43-2f1e-4d0d-8d3a-1c1f3f0b2a11",
    }
    if account_public_id is not None:
        meta["custom_data"] = {"account_id": account_public_id}
    return {
        "meta": meta,
        "data": {
            "type": "subscriptions",
            "id": sub_id,
            "attributes": {
                "store_id": 12345,
                "customer_id": 67890,
                "order_id": 1001,
                "order_item_id": 2001,
                "product_id": 301,
                "variant_id": int(variant_id),
                "product_name": "BudgetLLM",
                "variant_name": "Pro" if variant_id == LS_VARIANT_PRO else "Team",
                "user_name": "Dana Smith",
                "user_email": "dana@example.com",
                "status": status,
                "status_formatted": status.replace("_", " ").title(),
                "card_brand": "visa",
                "card_last_four": "4242",
                "payment_processor": "stripe",
                "pause": None,
                "cancelled": status in ("cancelled", "expired"),
                "trial_ends_at": None,
                "billing_anchor": 1,
                "first_subscription_item": {
                    "id": 5001,
                    "subscription_id": int(sub_id),
                    "price_id": 6001,
                    "quantity": 1,
                    "is_usage_based": False,
                    "created_at": iso(updated_at),
                    "updated_at": iso(updated_at),
                },
                "urls": {
                    "update_payment_method": "https://budgetllm.lemonsqueezy.com/subscription/1/payment-details?expires=1&signature=x",
                    "customer_portal": "https://budgetllm.lemonsqueezy.com/billing?expires=1&signature=y",
                    "customer_portal_update_subscription": "https://budgetllm.lemonsqueezy.com/billing/1/update?expires=1&signature=z",
                },
                "renews_at": iso(renews_at) if renews_at else None,
                "ends_at": iso(ends_at) if ends_at else None,
                "created_at": iso(updated_at),
                "updated_at": iso(updated_at),
                "test_mode": True,
            },
            "relationships": {
                "store": {
                    "links": {
                        "related": "https://api.lemonsqueezy.com/v1/subscriptions/1/store",
                        "self": "https://api.lemonsqueezy.com/v1/subscriptions/1/relationships/store",
                    }
                },
                "customer": {
                    "links": {
                        "related": "https://api.lemonsqueezy.com/v1/subscriptions/1/customer",
                        "self": "https://api.lemonsqueezy.com/v1/subscriptions/1/relationships/customer",
                    }
                },
            },
            "links": {"self": f"https://api.lemonsqueezy.com/v1/subscriptions/{sub_id}"},
        },
    }


def ls_invoice_event(
    event_name: str,
    *,
    invoice_id: str,
    sub_id: str,
    updated_at: datetime,
    total: int = 1_900,
    status: str = "paid",
    account_public_id: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "test_mode": True,
        "event_name": event_name,
        "webhook_id": "7b5f5c43-2f1e-4d0d-8d3a-1c1f3f0b2a11",
    }
    if account_public_id is not None:
        meta["custom_data"] = {"account_id": account_public_id}
    return {
        "meta": meta,
        "data": {
            "type": "subscription-invoices",
            "id": invoice_id,
            "attributes": {
                "store_id": 12345,
                "subscription_id": int(sub_id),
                "customer_id": 67890,
                "user_name": "Dana Smith",
                "user_email": "dana@example.com",
                "billing_reason": "initial",
                "card_brand": "visa",
                "card_last_four": "4242",
                "currency": "USD",
                "currency_rate": "1.00000000",
                "status": status,
                "status_formatted": status.title(),
                "refunded": False,
                "refunded_at": None,
                "subtotal": total,
                "discount_total": 0,
                "tax": 0,
                "tax_inclusive": False,
                "total": total,
                "refunded_amount": 0,
                "subtotal_usd": total,
                "discount_total_usd": 0,
                "tax_usd": 0,
                "total_usd": total,
                "refunded_amount_usd": 0,
                "subtotal_formatted": f"${total / 100:.2f}",
                "discount_total_formatted": "$0.00",
                "tax_formatted": "$0.00",
                "total_formatted": f"${total / 100:.2f}",
                "refunded_amount_formatted": "$0.00",
                "urls": {"invoice_url": "https://app.lemonsqueezy.com/my-orders/invoice"},
                "created_at": iso(updated_at),
                "updated_at": iso(updated_at),
                "test_mode": True,
            },
            "relationships": {},
            "links": {
                "self": f"https://api.lemonsqueezy.com/v1/subscription-invoices/{invoice_id}"
            },
        },
    }
