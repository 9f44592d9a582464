from __future__ import annotations

import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

from django.urls import reverse

from billing.entitlements import plan_for
from billing.models import Subscription
from tests.conftest import ROOT

from . import payloads as p
from .factories import subscription


def start_razorpay(person, plan: str = "pro") -> Subscription:
    response = person.client.post(reverse("billing:razorpay_subscribe"), {"plan": plan})
    assert response.status_code == 302
    sub = Subscription.objects.get(account=person.account)
    assert response["Location"] == reverse("billing:razorpay_checkout", args=[sub.public_id])
    return sub


def result_for(
    sub: Subscription, *, secret: str = p.RAZORPAY_KEY_SECRET, pay_id: str = "pay_Checkout000001"
) -> dict:
    """What Razorpay Checkout's handler hands the page: signed with the key secret."""
    return {
        "razorpay_payment_id": pay_id,
        "razorpay_subscription_id": sub.provider_subscription_id,
        "razorpay_signature": p.sign(f"{pay_id}|{sub.provider_subscription_id}".encode(), secret),
    }


def test_subscribe_creates_a_razorpay_subscription_for_the_account(owner) -> None:
    sub = start_razorpay(owner)
    assert sub.status == "created" and sub.plan == "pro"
    assert sub.provider_subscription_id.startswith("sub_")
    assert plan_for(owner.account) == "free"  # nothing granted before payment


def test_verified_checkout_result_grants_pro_at_once(owner) -> None:
    sub = start_razorpay(owner)
    response = owner.client.post(reverse("billing:razorpay_verify"), result_for(sub), follow=True)
    assert response.status_code == 200
    sub.refresh_from_db()
    assert sub.status == "authenticated"
    assert plan_for(owner.account) == "pro"
    assert b"Welcome to Pro" in response.content


def test_checkout_result_with_a_forged_signature_grants_nothing(owner) -> None:
    sub = start_razorpay(owner)
    owner.client.post(reverse("billing:razorpay_verify"), result_for(sub, secret="guess"))
    sub.refresh_from_db()
    assert sub.status == "created"
    assert plan_for(owner.account) == "free"


def test_checkout_result_signed_for_another_subscription_grants_nothing(owner) -> None:
    sub = start_razorpay(owner)
    data = result_for(sub)
    data["razorpay_payment_id"] = "pay_SomethingElse01"
    owner.client.post(reverse("billing:razorpay_verify"), data)
    assert plan_for(owner.account) == "free"


def test_someone_elses_subscription_cannot_be_claimed(owner, outsider) -> None:
    sub = start_razorpay(owner)
    outsider.client.post(reverse("billing:razorpay_verify"), result_for(sub))
    assert plan_for(outsider.account) == "free"
    assert plan_for(owner.account) == "free"


def test_checkout_page_is_404_for_an_outsider(owner, outsider) -> None:
    sub = start_razorpay(owner)
    url = reverse("billing:razorpay_checkout", args=[sub.public_id])
    assert outsider.client.get(url).status_code == 404


def test_standin_checkout_widget_posts_a_result_that_verifies(owner) -> None:
    sub = start_razorpay(owner)
    page = owner.client.get(reverse("billing:razorpay_checkout", args=[sub.public_id]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-testid="standin-razorpay"' in html
    assert "checkout.razorpay.com/v1/checkout.js" not in html  # the stand-in loads nothing
    fields = dict(
        (name, html.split(f'name="{name}" value="')[1].split('"')[0])
        for name in ("razorpay_payment_id", "razorpay_subscription_id", "razorpay_signature")
    )
    owner.client.post(reverse("billing:razorpay_verify"), fields)
    assert plan_for(owner.account) == "pro"


def test_real_checkout_page_loads_razorpay_script_allowed_by_its_csp_only(owner, settings) -> None:
    settings.BILLING_CHECKOUT_STANDIN = False
    sub = Subscription.objects.create(
        account=owner.account,
        provider="razorpay",
        provider_subscription_id="sub_Real000000001",
        plan="pro",
    )
    page = owner.client.get(reverse("billing:razorpay_checkout", args=[sub.public_id]))
    assert "https://checkout.razorpay.com/v1/checkout.js" in page.content.decode()
    assert "https://checkout.razorpay.com" in page["Content-Security-Policy"]
    billing = owner.client.get(reverse("billing:page"))
    assert "razorpay.com" not in billing["Content-Security-Policy"]
    assert "checkout.razorpay.com" not in billing.content.decode()


def test_cancel_at_period_end_keeps_the_plan_until_then(owner) -> None:
    subscription(owner.account, plan="pro")
    response = owner.client.post(reverse("billing:cancel"), follow=True)
    assert b"stays until" in response.content
    sub = Subscription.objects.get()
    assert sub.cancel_at_period_end is True
    assert plan_for(owner.account) == "pro"


def test_lemonsqueezy_checkout_carries_the_account_id_as_custom_data(owner) -> None:
    response = owner.client.get(reverse("billing:lemonsqueezy_checkout", args=["pro"]))
    url = urlsplit(response["Location"])
    assert url.netloc == "budgetllm.lemonsqueezy.com"
    assert url.path == f"/checkout/buy/{p.LS_VARIANT_PRO}"
    query = parse_qs(url.query)
    assert query["checkout[custom][account_id]"] == [str(owner.account.public_id)]
    assert query["checkout[email]"] == ["owner@example.com"]


def test_standin_is_refused_when_debug_is_off() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "DEBUG": "false",
        "BILLING_CHECKOUT_STANDIN": "true",
        "SECRET_KEY": "x" * 50,
        "VAULT_KEYS": "IPGSiIDXWm6q3l8UDD3JUmYqKLMjVGfZ9GvmrYv3Xh0=",
        "KEY_HASH_SECRET": "y" * 32,
        "ALLOWED_HOSTS": "example.com",
        "DJANGO_SETTINGS_MODULE": "budgetllm_site.settings",
    }
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "BILLING_CHECKOUT_STANDIN=true is refused when DEBUG is off" in result.stderr
