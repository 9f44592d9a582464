from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from billing.entitlements import PLANS

from .forms import WaitlistForm
from .services import WaitlistRateLimited, waitlist_join

# Prices as PRODUCT.md lists them; the feature columns come from the entitlements.
PLAN_PRICES = {"free": "$0", "pro": "$19 / month", "team": "$49 / month"}


def _context(form: WaitlistForm, joined: bool = False) -> dict[str, object]:
    plans = [
        {
            "code": code,
            "price": PLAN_PRICES[code],
            "e": e,
            "alerts": e.alert_channels_display,
        }
        for code, e in PLANS.items()
    ]
    return {"form": form, "joined": joined, "plans": plans}


def landing(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("dashboard")
    joined = request.GET.get("joined") == "1"
    return render(request, "landing.html", _context(WaitlistForm(), joined=joined))


@require_POST
def waitlist(request: HttpRequest) -> HttpResponse:
    """HTMX swaps the thank-you in place; without JS, a redirect back to the landing page."""
    form = WaitlistForm(request.POST)
    template = "landing.html#waitlist" if request.htmx else "landing.html"  # type: ignore[attr-defined]
    if form.is_valid():
        try:
            waitlist_join(email=form.cleaned_data["email"], ip=request.META.get("REMOTE_ADDR", ""))
        except WaitlistRateLimited as exc:
            form.add_error("email", str(exc))
        else:
            if request.htmx:  # type: ignore[attr-defined]
                return render(request, template, _context(WaitlistForm(), joined=True))
            return redirect("/?joined=1#waitlist")
    return render(request, template, _context(form))
