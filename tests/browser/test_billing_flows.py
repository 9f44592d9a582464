"""Upgrade and downgrade as a user walks them, through the stand-in checkouts.

The browser drives the product; the test plays the payment providers' servers by
delivering webhooks signed with the product's test secrets, shaped like their documented
deliveries (tests/billing/payloads.py).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.billing import payloads as p
from tests.browser.conftest import BILLING_ENV, LiveProduct, http, shot

pytestmark = pytest.mark.browser


def sign_up(page: Any, product: LiveProduct, email: str) -> None:
    page.goto(product.url("/accounts/login/"))
    page.fill("input[name=email]", email)
    page.click("button[type=submit].primary")
    page.goto(product.wait_for_link(to=email))
    # The same browser that asked is signed in at once (a new user lands on the guided
    # setup, a returning one on the dashboard); another browser confirms with a click.
    signed_in = re.compile(r".*/(dashboard|welcome)/.*")
    if not signed_in.match(page.url):
        page.click("main button[type=submit].primary")
    page.wait_for_url(signed_in)


def add_provider_key(page: Any, product: LiveProduct) -> None:
    page.goto(product.url("/keys/"))
    page.fill("#provider-form input[name=key]", "sk-browser-test-" + "a" * 24)
    page.click("#provider-form button[type=submit]")
    page.wait_for_selector("#provider-keys table")


def create_api_key(page: Any, product: LiveProduct, name: str) -> None:
    page.goto(product.url("/keys/"))
    page.fill("#api-form input[name=name]", name)
    page.click("#api-form button[type=submit]")
    # Wait for the one-time reveal of the new key: the page always mentions "bllm_", so
    # waiting for that text would return before the form's response arrived.
    page.wait_for_selector("#new-key-value")


def post_razorpay(product: LiveProduct, payload: dict[str, Any], event_id: str) -> int:
    body = p.body_bytes(payload)
    with http(product) as client:
        response = client.post(
            "/billing/webhooks/razorpay/",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Razorpay-Signature": p.sign(body, BILLING_ENV["RAZORPAY_WEBHOOK_SECRET"]),
                "X-Razorpay-Event-Id": event_id,
            },
        )
    return response.status_code


def post_lemonsqueezy(product: LiveProduct, payload: dict[str, Any]) -> int:
    body = p.body_bytes(payload)
    with http(product) as client:
        response = client.post(
            "/billing/webhooks/lemonsqueezy/",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Signature": p.sign(body, BILLING_ENV["LEMONSQUEEZY_WEBHOOK_SECRET"]),
                "X-Event-Name": payload["meta"]["event_name"],
            },
        )
    return response.status_code


def hit_the_free_key_limit(page: Any, product: LiveProduct) -> None:
    add_provider_key(page, product)
    create_api_key(page, product, "first")
    page.goto(product.url("/keys/"))
    assert page.is_visible("text=plan allows 1 active BudgetLLM key")
    assert not page.is_visible("#api-form")
    shot(page, "free limit reached")


def upgrade_through_razorpay(page: Any, product: LiveProduct) -> str:
    """Billing page → Pro with Razorpay → stand-in Checkout → verified; returns sub id."""
    page.goto(product.url("/billing/"))
    page.click("[data-testid=razorpay-pro]")
    widget = page.locator("[data-testid=standin-razorpay]")
    widget.wait_for()
    sub_id = re.search(r"sub_[A-Za-z0-9]{14}", widget.inner_text()).group(0)  # type: ignore[union-attr]
    shot(page, "razorpay checkout")
    page.click("[data-testid=standin-pay]")
    page.wait_for_selector("text=Welcome to Pro")
    return sub_id


def test_free_user_upgrades_to_pro_with_razorpay_and_creates_a_second_key(
    product: LiveProduct, page: Any
) -> None:
    page.set_extra_http_headers({"Accept-Language": "en-IN,en;q=0.9"})
    sign_up(page, product, "ravi@example.in")
    hit_the_free_key_limit(page, product)

    page.goto(product.url("/billing/"))
    assert page.inner_text("[data-testid=plan-name]") == "Free"
    offers = page.locator(".offer").evaluate_all("els => els.map(e => e.dataset.provider)")
    assert offers == ["razorpay", "lemonsqueezy"]  # India: rupees first, dollars available
    assert page.is_visible("text=₹1,599/month") and page.is_visible("text=$19/month")
    shot(page, "billing free")

    sub_id = upgrade_through_razorpay(page, product)
    assert page.inner_text("[data-testid=plan-name]") == "Pro"
    shot(page, "pro after checkout")

    # Razorpay's servers then confirm the charge.
    now = int(time.time())
    charged = p.rzp_event(
        "subscription.charged",
        subscription=p.rzp_subscription(
            sub_id=sub_id,
            status="active",
            plan_id=BILLING_ENV["RAZORPAY_PLAN_PRO"],
            current_start=now,
            current_end=now + 30 * 86400,
            paid_count=1,
        ),
        payment=p.rzp_payment(pay_id="pay_BrowserRzp0001", created_at=now),
        created_at=now,
    )
    assert post_razorpay(product, charged, "evt_browser_charged") == 200
    assert post_razorpay(product, charged, "evt_browser_charged") == 200  # redelivery
    page.reload()
    assert page.locator("#payments td", has_text="₹1,599").count() == 1
    assert page.is_visible("#usage td:text-is('5')")

    create_api_key(page, product, "second")
    page.goto(product.url("/keys/"))
    assert page.locator("#api-keys tbody tr").count() == 2
    shot(page, "second key on pro")


def test_free_user_upgrades_to_pro_with_lemonsqueezy(product: LiveProduct, page: Any) -> None:
    page.set_extra_http_headers({"Accept-Language": "en-US,en;q=0.9"})
    sign_up(page, product, "dana@example.com")
    hit_the_free_key_limit(page, product)

    page.goto(product.url("/billing/"))
    offers = page.locator(".offer").evaluate_all("els => els.map(e => e.dataset.provider)")
    assert offers[0] == "lemonsqueezy"
    page.click("[data-testid=lemonsqueezy-pro]")
    checkout = page.locator("[data-testid=standin-lemonsqueezy]")
    checkout.wait_for()
    account_id = re.search(r"account_id = ([0-9a-f-]{36})", checkout.inner_text()).group(1)  # type: ignore[union-attr]
    shot(page, "lemonsqueezy checkout")
    page.click("[data-testid=standin-pay]")
    page.wait_for_selector("text=as soon as LemonSqueezy confirms")
    assert page.inner_text("[data-testid=plan-name]") == "Free"

    # LemonSqueezy's servers confirm the subscription and its first payment.
    now = datetime.now(UTC).replace(microsecond=0)
    created = p.ls_subscription_event(
        "subscription_created",
        sub_id="90001",
        status="active",
        updated_at=now,
        account_public_id=account_id,
        variant_id=BILLING_ENV["LEMONSQUEEZY_VARIANT_PRO"],
        renews_at=now + timedelta(days=30),
    )
    paid = p.ls_invoice_event(
        "subscription_payment_success",
        invoice_id="91001",
        sub_id="90001",
        updated_at=now,
        account_public_id=account_id,
    )
    assert post_lemonsqueezy(product, created) == 200
    assert post_lemonsqueezy(product, paid) == 200
    page.goto(product.url("/billing/"))
    assert page.inner_text("[data-testid=plan-name]") == "Pro"
    assert page.locator("#payments td", has_text="$19").count() == 1
    shot(page, "pro via lemonsqueezy")

    create_api_key(page, product, "second")
    page.goto(product.url("/keys/"))
    assert page.locator("#api-keys tbody tr").count() == 2


def test_cancellation_webhook_downgrades_without_losing_keys(
    product: LiveProduct, page: Any
) -> None:
    email = "cto@example.com"
    sign_up(page, product, email)
    sub_id = upgrade_through_razorpay(page, product)
    add_provider_key(page, product)
    for name in ("alpha", "beta", "gamma"):
        create_api_key(page, product, name)
    shot(page, "three keys on pro")

    cancelled = p.rzp_event(
        "subscription.cancelled",
        subscription=p.rzp_subscription(
            sub_id=sub_id, status="cancelled", plan_id=BILLING_ENV["RAZORPAY_PLAN_PRO"]
        ),
        created_at=int(time.time()),
    )
    assert post_razorpay(product, cancelled, "evt_browser_cancel") == 200

    page.goto(product.url("/billing/"))
    assert page.inner_text("[data-testid=plan-name]") == "Free"
    banner = page.inner_text("[data-testid=billing-notice]")
    assert "Pro to Free" in banner and "Nothing was deleted" in banner
    assert page.is_visible("text=2 keys disabled")
    shot(page, "downgraded banner")
    assert (
        "Pro to Free"
        in product.wait_for_mail(to=email)["Subject"] + product.mails(to=email)[-1].get_content()
    )

    page.goto(product.url("/keys/"))
    rows = page.locator("#api-keys tbody tr")
    assert rows.count() == 3  # nothing deleted
    assert page.locator("text=disabled on your plan").count() == 2
    shot(page, "keys disabled not deleted")

    # The user picks which key stays enabled.
    page.goto(product.url("/billing/keys/"))
    for box in page.locator("input[name=api_keys]").all():
        box.uncheck()
    page.locator("label", has_text="alpha").locator("input").check()
    page.click("text=Keep these")
    page.wait_for_selector("text=the keys you chose are enabled")
    page.goto(product.url("/keys/"))
    active_row = page.locator("#api-keys tbody tr", has_text="active")
    assert active_row.count() == 1 and "alpha" in active_row.inner_text()
    shot(page, "chosen key kept")
