"""The development/test stand-in for the providers' hosted checkouts.

Plays the provider's part only: it signs a checkout result exactly as Razorpay's
widget hands it to the page (HMAC-SHA256 of "payment_id|subscription_id" under the
key secret). Our server then verifies it with the same code as a real payment.
Only reachable when BILLING_CHECKOUT_STANDIN is on, which settings refuse without DEBUG.
"""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings

from .gateway import razorpay_style_id


def razorpay_checkout_result(*, subscription_id: str) -> dict[str, str]:
    payment_id = razorpay_style_id("pay")
    signature = hmac.new(
        settings.RAZORPAY_KEY_SECRET.encode(),
        f"{payment_id}|{subscription_id}".encode(),
        hashlib.sha256,
    ).hexdigest()
    return {
        "razorpay_payment_id": payment_id,
        "razorpay_subscription_id": subscription_id,
        "razorpay_signature": signature,
    }
