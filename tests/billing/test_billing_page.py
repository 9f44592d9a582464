from __future__ import annotations

from django.urls import reverse

from billing.models import Payment

from .factories import subscription


def test_billing_page_shows_plan_limits_and_usage(owner) -> None:
    html = owner.client.get(reverse("billing:page")).content.decode()
    assert 'data-testid="plan-name">Free<' in html
    assert "up to $100" in html
    assert "7 days" in html


def test_razorpay_is_offered_first_for_india_and_lemonsqueezy_still_available(owner) -> None:
    owner.account.timezone = "Asia/Kolkata"
    owner.account.save()
    html = owner.client.get(reverse("billing:page")).content.decode()
    assert html.index('data-provider="razorpay"') < html.index('data-provider="lemonsqueezy"')
    assert "₹1,599/month" in html and "$19/month" in html


def test_accept_language_en_in_puts_razorpay_first(owner) -> None:
    html = owner.client.get(
        reverse("billing:page"), headers={"Accept-Language": "en-IN,en;q=0.8"}
    ).content.decode()
    assert html.index('data-provider="razorpay"') < html.index('data-provider="lemonsqueezy"')


def test_elsewhere_lemonsqueezy_is_offered_first(owner) -> None:
    owner.account.timezone = "Europe/Berlin"
    owner.account.save()
    html = owner.client.get(
        reverse("billing:page"), headers={"Accept-Language": "de-DE"}
    ).content.decode()
    assert html.index('data-provider="lemonsqueezy"') < html.index('data-provider="razorpay"')


def test_payment_history_shows_integer_minor_units_formatted(owner, outsider) -> None:
    sub = subscription(owner.account)
    Payment.objects.create(
        account=owner.account,
        subscription=sub,
        provider="razorpay",
        provider_payment_id="pay_1",
        amount_minor=159_950,
        currency="INR",
        status="captured",
        description="Pro plan",
    )
    html = owner.client.get(reverse("billing:page")).content.decode()
    assert "₹1,599.50" in html
    assert "₹1,599.50" not in outsider.client.get(reverse("billing:page")).content.decode()


def test_billing_page_requires_sign_in(client) -> None:
    response = client.get(reverse("billing:page"))
    assert response.status_code == 302
