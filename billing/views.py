"""Billing pages and provider webhooks. Thin: parse, call a service, render."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.csp import CSP
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csp import csp_override
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from accounts.models import Account
from accounts.services import account_for_user
from keys.models import ApiKey, ProviderKey

from . import selectors, services, standin
from .entitlements import entitlements_for
from .forms import KeepKeysForm, PlanForm, RazorpayCheckoutResultForm
from .gateway import GatewayError
from .models import Provider, Subscription
from .webhooks import WebhookRejected, lemonsqueezy_webhook_receive, razorpay_webhook_receive


def _account(request: HttpRequest) -> Account:
    return account_for_user(request.user)  # type: ignore[arg-type]


@login_required
def billing_page(request: HttpRequest) -> HttpResponse:
    account = _account(request)
    overview = selectors.billing_overview(
        account=account, accept_language=request.headers.get("Accept-Language", "")
    )
    email = request.user.email  # type: ignore[union-attr]
    ls_urls = {
        plan: services.lemonsqueezy_checkout_url(account=account, plan=plan, email=email)
        for plan in services.PAID_PLANS
    }
    return render(
        request,
        "billing/billing.html",
        {"o": overview, "ls_urls": ls_urls, "standin": settings.BILLING_CHECKOUT_STANDIN},
    )


@login_required
@require_POST
def razorpay_subscribe(request: HttpRequest) -> HttpResponse:
    form = PlanForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose Pro or Team.")
        return redirect("billing:page")
    try:
        sub = services.razorpay_subscription_start(
            account=_account(request), plan=form.cleaned_data["plan"]
        )
    except (services.BillingError, GatewayError) as exc:
        messages.error(request, str(exc))
        return redirect("billing:page")
    return redirect("billing:razorpay_checkout", public_id=sub.public_id)


# Razorpay Checkout is the one third-party script the site loads, and only here: it
# runs from checkout.razorpay.com and opens its payment form in a frame from
# api.razorpay.com.
RAZORPAY_CHECKOUT_CSP: dict[str, Collection[str] | str] = {
    **cast("dict[str, Collection[str] | str]", settings.SECURE_CSP),
    "script-src": [CSP.SELF, CSP.NONCE, "https://checkout.razorpay.com"],
    "frame-src": ["https://api.razorpay.com", "https://checkout.razorpay.com"],
    "connect-src": [CSP.SELF, "https://api.razorpay.com", "https://lumberjack.razorpay.com"],
    "img-src": [CSP.SELF, "data:", "https://cdn.razorpay.com"],
}


@login_required
@csp_override(RAZORPAY_CHECKOUT_CSP)
def razorpay_checkout(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    account = _account(request)
    sub = get_object_or_404(
        Subscription, public_id=public_id, account=account, provider=Provider.RAZORPAY
    )
    if sub.status != Subscription.Status.CREATED:
        return redirect("billing:page")
    price = next(p for p in services.prices()[Provider.RAZORPAY] if p.plan == sub.plan)
    context = {
        "sub": sub,
        "price": price,
        "key_id": settings.RAZORPAY_KEY_ID,
        "standin": settings.BILLING_CHECKOUT_STANDIN,
        "standin_result": (
            standin.razorpay_checkout_result(subscription_id=sub.provider_subscription_id)
            if settings.BILLING_CHECKOUT_STANDIN
            else None
        ),
    }
    return render(request, "billing/razorpay_checkout.html", context)


@login_required
@require_POST
def razorpay_verify(request: HttpRequest) -> HttpResponse:
    """Where Checkout's handler posts its result; the plan is granted only if it verifies."""
    form = RazorpayCheckoutResultForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The payment result was incomplete; nothing was changed.")
        return redirect("billing:page")
    try:
        sub = services.razorpay_checkout_verify(
            account=_account(request),
            payment_id=form.cleaned_data["razorpay_payment_id"],
            subscription_id=form.cleaned_data["razorpay_subscription_id"],
            signature=form.cleaned_data["razorpay_signature"],
        )
    except services.CheckoutInvalid as exc:
        messages.error(request, str(exc))
        return redirect("billing:page")
    messages.success(request, f"Welcome to {sub.plan.title()}: your new limits apply now.")
    return redirect("billing:page")


@login_required
def lemonsqueezy_checkout(request: HttpRequest, plan: str) -> HttpResponse:
    if plan not in services.PAID_PLANS:
        raise Http404
    url = services.lemonsqueezy_checkout_url(
        account=_account(request),
        plan=plan,
        email=request.user.email,  # type: ignore[union-attr]
    )
    return redirect(url)


@login_required
@require_POST
def subscription_cancel(request: HttpRequest) -> HttpResponse:
    try:
        sub = services.subscription_cancel_at_period_end(account=_account(request))
    except (services.BillingError, GatewayError) as exc:
        messages.error(request, str(exc))
        return redirect("billing:page")
    until = (
        sub.current_period_end.date().isoformat() if sub.current_period_end else "the period end"
    )
    messages.success(
        request, f"Cancelled: {sub.plan.title()} stays until {until}, then the Free plan applies."
    )
    return redirect("billing:page")


@login_required
def keys_keep(request: HttpRequest) -> HttpResponse:
    """Choose which keys stay enabled within the plan's limits (after a downgrade)."""
    account = _account(request)
    provider_keys = list(ProviderKey.objects.filter(account=account).order_by("created_at"))
    api_keys = list(
        ApiKey.objects.filter(account=account, revoked_at__isnull=True)
        .select_related("provider_key")
        .order_by("created_at")
    )
    form = KeepKeysForm(
        request.POST or None,
        provider_choices=[(str(k.public_id), str(k)) for k in provider_keys],
        api_choices=[(str(k.public_id), str(k)) for k in api_keys],
        initial={
            "provider_keys": [str(k.public_id) for k in provider_keys if k.disabled_at is None],
            "api_keys": [str(k.public_id) for k in api_keys if k.disabled_at is None],
        },
    )
    if request.method == "POST" and form.is_valid():
        try:
            services.keys_keep_choose(
                account=account,
                provider_key_ids={uuid.UUID(v) for v in form.cleaned_data["provider_keys"]},
                api_key_ids={uuid.UUID(v) for v in form.cleaned_data["api_keys"]},
            )
        except services.BillingError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "Saved: the keys you chose are enabled.")
            return redirect("billing:page")
    return render(
        request,
        "billing/keys_keep.html",
        {
            "form": form,
            "ent": entitlements_for(account),
            "provider_keys": provider_keys,
            "api_keys": api_keys,
        },
    )


@login_required
@require_POST
def notices_dismiss(request: HttpRequest) -> HttpResponse:
    services.notices_dismiss(account=_account(request))
    if request.htmx:  # type: ignore[attr-defined]
        return HttpResponse("")
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = reverse("billing:page")
    return redirect(target)


@csrf_exempt  # called by Razorpay's servers; authenticated by the body's signature instead
@require_POST
def razorpay_webhook(request: HttpRequest) -> HttpResponse:
    try:
        result = razorpay_webhook_receive(
            raw_body=request.body,
            signature=request.headers.get("X-Razorpay-Signature", ""),
            event_id=request.headers.get("X-Razorpay-Event-Id", ""),
        )
    except WebhookRejected as exc:
        return HttpResponseBadRequest(str(exc))
    return HttpResponse(result.outcome, status=result.status_code, content_type="text/plain")


@csrf_exempt  # called by LemonSqueezy's servers; authenticated by X-Signature instead
@require_POST
def lemonsqueezy_webhook(request: HttpRequest) -> HttpResponse:
    try:
        result = lemonsqueezy_webhook_receive(
            raw_body=request.body, signature=request.headers.get("X-Signature", "")
        )
    except WebhookRejected as exc:
        return HttpResponseBadRequest(str(exc))
    return HttpResponse(result.outcome, status=result.status_code, content_type="text/plain")


@login_required
def standin_lemonsqueezy(request: HttpRequest, variant: str) -> HttpResponse:
    """Development stand-in for LemonSqueezy's hosted checkout (404 unless enabled).

    Paying here only returns to the billing page, as the real checkout does: the plan
    changes when the (signed) subscription_created webhook arrives.
    """
    if not settings.BILLING_CHECKOUT_STANDIN:
        raise Http404
    plan = services.plan_for_lemonsqueezy_variant(variant)
    if plan is None:
        raise Http404
    if request.method == "POST":
        messages.info(
            request, "Thanks! Your plan changes as soon as LemonSqueezy confirms the payment."
        )
        return redirect("billing:page")
    price = next(p for p in services.prices()[Provider.LEMONSQUEEZY] if p.plan == plan)
    return render(
        request,
        "billing/standin_lemonsqueezy.html",
        {
            "plan": plan,
            "price": price,
            "account_id": request.GET.get("checkout[custom][account_id]", ""),
            "email": request.GET.get("checkout[email]", ""),
        },
    )
