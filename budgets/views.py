"""Dashboard, caps page, kill-switch and onboarding. Thin: selectors read, services act."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from accounts.http import AuthedRequest
from accounts.models import Account
from accounts.services import account_for_request, account_is_owner
from keys.models import ApiKey, ProviderKey
from keys.services import KeyServiceError, api_key_create, api_key_set_paused, provider_key_add

from . import selectors
from .caps import CapInvalid, CapSpec, cap_delete, cap_upsert, suggested_monthly_cap_micros
from .controls import account_set_paused
from .forms import (
    ApiKeyForm,
    CapForm,
    ModelPriceForm,
    MonthlyCapForm,
    ProviderKeyForm,
    usd_to_micros,
)
from .model_prices import ModelPriceInvalid, model_price_delete, model_price_upsert
from .models import MICROS_PER_USD, Cap, ModelPrice
from .services import cap_status, plan_limit_status

log = logging.getLogger(__name__)


def _account(request: AuthedRequest) -> Account:
    """The signed-in account, with its time zone active for every date we render."""
    account = account_for_request(request)
    timezone.activate(account.tz)
    return account


def _chart_days(request: AuthedRequest) -> int:
    try:
        days = int(request.GET.get("days", selectors.DEFAULT_CHART_DAYS))
    except ValueError:
        return selectors.DEFAULT_CHART_DAYS
    return days if days in selectors.CHART_PERIODS else selectors.DEFAULT_CHART_DAYS


def _page(request: AuthedRequest) -> int:
    try:
        return max(1, min(int(request.GET.get("page", 1)), 10_000))
    except ValueError:
        return 1


# --- Dashboard -------------------------------------------------------------------------------


def _banners(
    account: Account, caps: list[selectors.CapProgress], keys: list[ApiKey]
) -> list[dict[str, Any]]:
    """Why requests are being refused right now, each with what the user can do."""
    out: list[dict[str, Any]] = []
    if account.paused_at:
        out.append(
            {
                "kind": "account_paused",
                "title": "Your account is paused",
                "since": account.paused_at,
            }
        )
    for key in keys:
        if key.paused_at:
            out.append(
                {
                    "kind": "key_paused",
                    "title": f"Key “{key.name}” is paused",
                    "key": key,
                    "since": key.paused_at,
                }
            )
    # The ledger knows what our recorded spend cannot: a cap that refused a request
    # (reserved worst case did not fit) counts as reached until its window rolls over.
    try:
        capped_ids = {s.cap_id for s in cap_status(account=account) if s.capped}
    except Exception:  # a ledger outage must not take the dashboard down with it
        log.exception("cap_status failed; showing caps reached by recorded spend only")
        capped_ids = set()
    for p in caps:
        if p.resets_at is not None and (p.reached or p.cap.pk in capped_ids):
            out.append({"kind": "capped", "title": f"{p.label} reached", "progress": p})
    try:
        plan = plan_limit_status(account=account)
    except Exception:  # as above: the dashboard stays up when the ledger is not
        log.exception("plan_limit_status failed; no plan-limit banner")
        plan = None
    if plan is not None and plan.capped:
        title = f"The {plan.plan.title()} plan's monthly limit reached"
        out.append({"kind": "plan_limit", "title": title, "plan": plan})
    return out


@login_required
def dashboard(request: AuthedRequest) -> HttpResponse:
    account = _account(request)
    keys = list(ApiKey.objects.filter(account=account, revoked_at__isnull=True).order_by("name"))
    if not keys and not selectors.has_usage(account=account):
        # First sign-in: nothing to show yet, so walk them through setup instead.
        return redirect("onboarding")
    days = _chart_days(request)
    snapshot = selectors.usage_snapshot(account=account)
    caps = selectors.cap_progress(account=account, snapshot=snapshot)
    page = _page(request)
    recent, has_more = selectors.recent_requests(account=account, page=page)
    context = {
        "account": account,
        "keys": keys,
        "header": selectors.header_numbers(snapshot=snapshot, caps=caps),
        "banners": _banners(account, caps, keys),
        "chart": selectors.chart_data(account=account, days=days, snapshot=snapshot),
        "periods": selectors.CHART_PERIODS,
        "by_key": selectors.spend_by_key(account=account, snapshot=snapshot),
        "by_model": selectors.spend_by_model(snapshot=snapshot),
        "runs": selectors.top_runs(account=account, snapshot=snapshot),
        "recent": recent,
        "page": page,
        "has_more": has_more,
        "window": snapshot.window,
        "is_owner": account_is_owner(user=request.user, account=account),
    }
    return render(request, "budgets/dashboard.html", context)


@login_required
def dashboard_chart(request: AuthedRequest) -> HttpResponse:
    """The charts alone (the 7/30/90 switch). Without HTMX, the whole dashboard."""
    if not request.htmx:  # type: ignore[attr-defined]
        return redirect(f"{reverse('dashboard')}?days={_chart_days(request)}")
    account = _account(request)
    days = _chart_days(request)
    context = {
        "chart": selectors.chart_data(account=account, days=days),
        "periods": selectors.CHART_PERIODS,
    }
    return render(request, "budgets/dashboard.html#charts", context)


@login_required
def dashboard_requests(request: AuthedRequest) -> HttpResponse:
    """One page of recent requests (HTMX pagination); without HTMX, the dashboard."""
    page = _page(request)
    if not request.htmx:  # type: ignore[attr-defined]
        return redirect(f"{reverse('dashboard')}?page={page}#recent")
    account = _account(request)
    recent, has_more = selectors.recent_requests(account=account, page=page)
    context = {"recent": recent, "page": page, "has_more": has_more}
    return render(request, "budgets/dashboard.html#recent", context)


# --- Kill-switch ---------------------------------------------------------------------------


def _own_key(account: Account, public_id: uuid.UUID) -> ApiKey:
    return get_object_or_404(ApiKey, account=account, public_id=public_id, revoked_at__isnull=True)


def _back(request: AuthedRequest) -> HttpResponse:
    target = reverse("dashboard")
    if request.htmx:  # type: ignore[attr-defined]
        response = HttpResponse(status=204)
        response["HX-Redirect"] = target
        return response
    return redirect(target)


@login_required
@require_http_methods(["GET", "POST"])
def account_pause(request: AuthedRequest) -> HttpResponse:
    """GET: the confirm step (for browsers without JS). POST: pause now."""
    account = _account(request)
    if request.method == "GET":
        return render(
            request,
            "budgets/confirm_pause.html",
            {"subject": "your whole account", "action": reverse("account_pause")},
        )
    account_set_paused(account=account, actor=request.user, paused=True)
    messages.warning(request, "Account paused: every request is refused until you resume.")
    return _back(request)


@login_required
@require_POST
def account_resume(request: AuthedRequest) -> HttpResponse:
    """Any member may pull the account-wide kill-switch (an emergency stop); only an owner
    may release it, since resuming lets the whole team's spend flow again."""
    account = _account(request)
    if not account_is_owner(user=request.user, account=account):
        raise PermissionDenied("Only an owner of the account can resume it.")
    account_set_paused(account=account, actor=request.user, paused=False)
    messages.success(request, "Account resumed.")
    return _back(request)


@login_required
@require_http_methods(["GET", "POST"])
def key_pause(request: AuthedRequest, public_id: uuid.UUID) -> HttpResponse:
    account = _account(request)
    key = _own_key(account, public_id)
    if request.method == "GET":
        return render(
            request,
            "budgets/confirm_pause.html",
            {"subject": f"key “{key.name}”", "action": reverse("key_pause", args=[key.public_id])},
        )
    api_key_set_paused(api_key=key, actor=request.user, paused=True)
    messages.warning(request, f"Key “{key.name}” paused.")
    return _back(request)


@login_required
@require_POST
def key_resume(request: AuthedRequest, public_id: uuid.UUID) -> HttpResponse:
    account = _account(request)
    key = _own_key(account, public_id)
    api_key_set_paused(api_key=key, actor=request.user, paused=False)
    messages.success(request, f"Key “{key.name}” resumed.")
    return _back(request)


# --- Caps ----------------------------------------------------------------------------------


def _caps_context(
    account: Account,
    form: CapForm,
    saved: Cap | None = None,
    *,
    price_form: ModelPriceForm | None = None,
    price_saved: ModelPrice | None = None,
) -> dict[str, Any]:
    snapshot = selectors.usage_snapshot(account=account)
    from billing.entitlements import entitlements_for

    return {
        "account": account,
        "form": form,
        "caps": selectors.cap_progress(account=account, snapshot=snapshot),
        "entitlements": entitlements_for(account),
        "saved": saved,
        "price_form": price_form or ModelPriceForm(),
        "prices": ModelPrice.objects.filter(account=account).order_by("model"),
        "price_saved": price_saved,
    }


@login_required
@require_http_methods(["GET", "POST"])
def caps(request: AuthedRequest) -> HttpResponse:
    account = _account(request)
    template = "budgets/caps.html#caps_section" if request.htmx else "budgets/caps.html"  # type: ignore[attr-defined]
    if request.method == "GET":
        initial: dict[str, Any] = {}
        for name in ("scope", "period", "model"):
            if name in request.GET:
                initial[name] = request.GET[name]
        if "key" in request.GET:
            initial["api_key"] = request.GET["key"]
        return render(
            request,
            "budgets/caps.html",
            _caps_context(account, CapForm(account=account, initial=initial)),
        )
    form = CapForm(request.POST, account=account)
    if form.is_valid():
        try:
            cap = cap_upsert(account=account, actor=request.user, spec=form.spec())
        except CapInvalid as exc:
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        else:
            if not request.htmx:  # type: ignore[attr-defined]
                messages.success(request, "Cap saved. It applies from the next request.")
                return redirect("caps")
            return render(
                request, template, _caps_context(account, CapForm(account=account), saved=cap)
            )
    # Invalid input re-renders the form with its errors, status 200 (HTMX swaps it in).
    return render(request, template, _caps_context(account, form))


@login_required
@require_POST
def cap_remove(request: AuthedRequest, public_id: uuid.UUID) -> HttpResponse:
    account = _account(request)
    cap = get_object_or_404(Cap, account=account, public_id=public_id)
    cap_delete(cap=cap, actor=request.user)
    if request.htmx:  # type: ignore[attr-defined]
        return render(
            request,
            "budgets/caps.html#caps_section",
            _caps_context(account, CapForm(account=account)),
        )
    messages.success(request, "Cap removed.")
    return redirect("caps")


@login_required
@require_POST
def model_price_save(request: AuthedRequest) -> HttpResponse:
    account = _account(request)
    form = ModelPriceForm(request.POST)
    saved = None
    if form.is_valid():
        try:
            saved = model_price_upsert(account=account, actor=request.user, spec=form.spec())
        except ModelPriceInvalid as exc:
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
    if not request.htmx:  # type: ignore[attr-defined]
        if saved is not None:
            messages.success(
                request, f"Price for {saved.model} saved. It applies from the next request."
            )
            return redirect(reverse("caps") + "#prices-section")
        return render(
            request,
            "budgets/caps.html",
            _caps_context(account, CapForm(account=account), price_form=form),
        )
    # Invalid input re-renders the form with its errors, status 200 (HTMX swaps it in).
    return render(
        request,
        "budgets/caps.html#prices_section",
        _caps_context(
            account,
            CapForm(account=account),
            price_form=None if saved else form,
            price_saved=saved,
        ),
    )


@login_required
@require_POST
def model_price_remove(request: AuthedRequest) -> HttpResponse:
    account = _account(request)
    if not model_price_delete(
        account=account, actor=request.user, model=request.POST.get("model", "")
    ):
        raise Http404("No such price.")
    if request.htmx:  # type: ignore[attr-defined]
        return render(
            request,
            "budgets/caps.html#prices_section",
            _caps_context(account, CapForm(account=account)),
        )
    messages.success(request, "Price removed.")
    return redirect("caps")


# --- Onboarding ----------------------------------------------------------------------------


def _snippet_context(account: Account, raw_key: str | None) -> dict[str, Any]:
    return {
        "base_url": settings.SITE_URL + "/v1",
        "raw_key": raw_key,
        "key_placeholder": raw_key or "bllm_your_key_here",
        "suggested_cap_usd": suggested_monthly_cap_micros(account=account) / MICROS_PER_USD,
    }


def _onboarding_context(account: Account, **extra: Any) -> dict[str, Any]:
    provider_key = (
        ProviderKey.objects.filter(account=account, disabled_at__isnull=True)
        .order_by("created_at")
        .first()
    )
    api_key = (
        ApiKey.objects.filter(account=account, revoked_at__isnull=True)
        .order_by("created_at")
        .first()
    )
    month_cap = Cap.objects.filter(
        account=account, scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH
    ).first()
    suggested = suggested_monthly_cap_micros(account=account)
    context: dict[str, Any] = {
        "account": account,
        "provider_key": provider_key,
        "api_key": api_key,
        "month_cap": month_cap,
        "provider_form": ProviderKeyForm(),
        "key_form": ApiKeyForm(initial={"name": "my-app"}),
        "cap_form": MonthlyCapForm(
            initial={
                "limit_usd": f"{(month_cap.limit_micros if month_cap else suggested) / MICROS_PER_USD:.2f}"
            }
        ),
        "received": selectors.has_usage(account=account),
        **_snippet_context(account, None),
    }
    context.update(extra)
    if context.get("raw_key"):
        context["key_placeholder"] = context["raw_key"]
    return context


# The pasted OpenAI key must never reach an error report or the debug page.
@sensitive_post_parameters("raw_key")
@login_required
@require_http_methods(["GET", "POST"])
def onboarding(request: AuthedRequest) -> HttpResponse:
    """Connect a provider key → create a bllm_ key → set a monthly cap → paste a snippet →
    see the first request arrive. Each step is a POST with `step`; the raw key is only in
    the response that creates it."""
    account = _account(request)
    if request.method == "GET":
        return render(request, "budgets/onboarding.html", _onboarding_context(account))
    step = request.POST.get("step")
    if step == "provider":
        pform = ProviderKeyForm(request.POST)
        if pform.is_valid():
            try:
                provider_key_add(
                    account=account,
                    actor=request.user,
                    raw_key=pform.cleaned_data["raw_key"],
                    name="OpenAI",
                )
            except KeyServiceError as exc:
                pform.add_error("raw_key", str(exc))
            else:
                return redirect("onboarding")
        return render(
            request, "budgets/onboarding.html", _onboarding_context(account, provider_form=pform)
        )
    if step == "key":
        kform = ApiKeyForm(request.POST)
        provider_key = (
            ProviderKey.objects.filter(account=account, disabled_at__isnull=True)
            .order_by("created_at")
            .first()
        )
        if provider_key is None:
            return redirect("onboarding")
        if kform.is_valid():
            try:
                _row, raw = api_key_create(
                    account=account,
                    actor=request.user,
                    provider_key=provider_key,
                    name=kform.cleaned_data["name"],
                )
            except KeyServiceError as exc:
                kform.add_error("name", str(exc))
            else:
                # Rendered, not redirected: this response is the only place the raw key
                # appears, so no cache (browser, proxy) may keep a copy of it.
                response = render(
                    request, "budgets/onboarding.html", _onboarding_context(account, raw_key=raw)
                )
                add_never_cache_headers(response)
                return response
        return render(
            request, "budgets/onboarding.html", _onboarding_context(account, key_form=kform)
        )
    if step == "cap":
        cform = MonthlyCapForm(request.POST)
        saved = None
        if cform.is_valid():
            spec = CapSpec(
                scope=Cap.Scope.ACCOUNT,
                period=Cap.Period.MONTH,
                limit_micros=usd_to_micros(cform.cleaned_data["limit_usd"]),
            )
            try:
                saved = cap_upsert(account=account, actor=request.user, spec=spec)
            except CapInvalid as exc:
                cform.add_error("limit_usd", str(exc))
        if request.htmx:  # type: ignore[attr-defined]
            # Swap only the cap step so a raw key shown above stays on screen.
            return render(
                request,
                "budgets/onboarding.html#cap_step",
                _onboarding_context(
                    account,
                    cap_form=cform,
                    month_cap=saved
                    or Cap.objects.filter(
                        account=account, scope=Cap.Scope.ACCOUNT, period=Cap.Period.MONTH
                    ).first(),
                    cap_saved=saved is not None,
                ),
            )
        if saved is not None:
            return redirect("onboarding")
        return render(
            request, "budgets/onboarding.html", _onboarding_context(account, cap_form=cform)
        )
    raise Http404("unknown step")


@login_required
def onboarding_first_request(request: AuthedRequest) -> HttpResponse:
    """Polled by the waiting indicator until the first usage record exists."""
    account = _account(request)
    context = {"received": selectors.has_usage(account=account)}
    if not request.htmx:  # type: ignore[attr-defined]
        return redirect("onboarding")
    return render(request, "budgets/onboarding.html#first_request", context)
