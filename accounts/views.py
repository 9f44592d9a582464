from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods
from django_htmx.http import HttpResponseClientRedirect

from . import services
from .forms import DeleteAccountForm, LoginForm, TimezoneForm
from .http import AuthedRequest


@never_cache
@require_http_methods(["GET", "POST"])
def login(request: HttpRequest) -> HttpResponse:
    """Sign up and sign in: one email field; the mail holds a magic link and a code."""
    next_url = services.safe_next_url(
        request=request, url=request.POST.get("next") or request.GET.get("next")
    )
    if request.user.is_authenticated:
        return redirect(next_url or settings.LOGIN_REDIRECT_URL)
    form = LoginForm(request.POST or None, initial={"next": next_url or ""})
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            services.login_mail_send(
                request=request,
                email=form.cleaned_data["email"],
                timezone_name=form.cleaned_data["timezone"],
                next_url=next_url,
            )
        except services.LoginMailRateLimited:
            form.add_error(
                None,
                "Too many sign-in emails were requested for this address or from your "
                "network. Please wait a few minutes, then try again.",
            )
            status = 429
        else:
            # The same redirect whether or not the address had an account.
            target = reverse("account_confirm_login_code")
            if next_url:
                target += "?" + urlencode({"next": next_url})
            return HttpResponseRedirect(target)
    return render(request, "accounts/login.html", {"form": form}, status=status)


@never_cache
@require_http_methods(["GET", "POST"])
def magic_link(request: HttpRequest, token: str) -> HttpResponse:
    """The link from the mail. Scanner-safe: only the asking browser or a POST signs in."""
    next_url = services.safe_next_url(request=request, url=request.GET.get("next"))
    user = services.magic_link_user(token=token)
    if user is None:
        return render(request, "accounts/magic_link.html", {"invalid": True}, status=410)
    if request.user.is_authenticated and request.user.pk == user.pk:
        return redirect(next_url or settings.LOGIN_REDIRECT_URL)
    if request.method == "POST" or services.is_asking_browser(request=request, user=user):
        response = services.login_with_magic_link(request=request, token=token, next_url=next_url)
        if response is None:
            # Lost a race with another click on the same link.
            return render(request, "accounts/magic_link.html", {"invalid": True}, status=410)
        return response
    # A GET without the asking browser's session: an email scanner prefetching the URL,
    # or the person on another device. Ask for a click; fetching alone consumes nothing.
    return render(request, "accounts/magic_link.html", {"email": user.email})


def signup(request: HttpRequest) -> HttpResponse:
    """Sign-up is the sign-in form: a new address gets an account on first sign-in."""
    target = reverse("account_login")
    if next_url := services.safe_next_url(request=request, url=request.GET.get("next")):
        target += "?" + urlencode({"next": next_url})
    return HttpResponseRedirect(target)


def no_passwords(request: HttpRequest) -> HttpResponse:
    """allauth's password pages: nobody here has a password, so they do not exist."""
    raise Http404("BudgetLLM has no passwords.")


def admin_login(request: HttpRequest) -> HttpResponse:
    """The admin has no login form of its own: staff sign in by magic link like everyone.

    That way the admin is never a side door around the login-mail rate limits, and a
    signed-in non-staff user learns nothing about it.
    """
    if request.user.is_authenticated:
        if request.user.is_staff:
            return redirect(
                services.safe_next_url(request=request, url=request.GET.get("next"))
                or "admin:index"
            )
        raise Http404
    query = urlencode({"next": request.GET.get("next") or reverse("admin:index")})
    return HttpResponseRedirect(f"{resolve_url('account_login')}?{query}")


@login_required
@require_http_methods(["GET", "POST"])
def account_settings(request: AuthedRequest) -> HttpResponse:
    account = services.account_for_user(request.user)
    form = TimezoneForm(request.POST or None, initial={"timezone": account.timezone})
    if request.method == "POST" and form.is_valid():
        services.account_set_timezone(account=account, timezone_name=form.cleaned_data["timezone"])
        messages.success(request, f"Time zone set to {account.timezone}.")
        if request.htmx:  # type: ignore[attr-defined]
            # A plain redirect would be followed by htmx and swapped into the form.
            return HttpResponseClientRedirect(reverse("account_settings"))
        return redirect("account_settings")
    template = "accounts/settings.html"
    if request.htmx:  # type: ignore[attr-defined]
        template += "#timezone-form"
    return render(
        request,
        template,
        {
            "form": form,
            "timezone_names": services.timezone_names(),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def account_delete(request: AuthedRequest) -> HttpResponse:
    form = DeleteAccountForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        services.account_delete(user=request.user)
        logout(request)
        messages.success(request, "Your account and everything in it has been deleted.")
        return redirect("landing")
    return render(request, "accounts/delete.html", {"form": form})
