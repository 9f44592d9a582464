"""The keys page: provider keys, bllm_ keys and the audit trail of one account.

Every view is scoped to the signed-in user's account: another account's key id is a
404, never a 403, so ids reveal nothing. Forms posted by HTMX get the form partial back
(status 200) when invalid, and the whole keys section (retargeted) when they succeed.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.http import AuthedRequest
from accounts.models import Account
from accounts.services import account_for_request

from . import selectors, services
from .forms import ApiKeyForm, ProviderKeyForm
from .models import ApiKey, ProviderKey

log = logging.getLogger(__name__)

TEMPLATE = "keys/index.html"


def _account(request: AuthedRequest) -> Account:
    """The signed-in account, with its time zone active for every date we render."""
    account = account_for_request(request)
    timezone.activate(account.tz)
    return account


def _with_spend_and_status(account: Account, api_keys: list[ApiKey]) -> list[ApiKey]:
    """Attach each key's spend this month (account time zone) for the spend column, and
    `capped_until` for a key that a reached key cap holds paused until its window rolls
    over (the issue's auto-pause: shown as paused here, serving again by itself).

    The numbers come from the dashboard's usage snapshot: the keys page shows the same
    figures as the dashboard, read the same way (rollups plus today's live tail). Imported
    here, not at the top: budgets builds on keys, and only this page reads back up.
    """
    from budgets.selectors import Totals, spend_by_key, usage_snapshot
    from budgets.services import capped_keys

    by_key = {
        row.public_id: row.totals
        for row in spend_by_key(account=account, snapshot=usage_snapshot(account=account))
    }
    try:
        capped = capped_keys(account=account)
    except Exception:  # a ledger outage must not take the keys page down with it
        log.exception("capped_keys failed; the keys page shows no cap-paused keys")
        capped = {}
    for key in api_keys:
        key.month_spend = by_key.get(str(key.public_id), Totals())  # type: ignore[attr-defined]
        key.capped = key.pk in capped  # type: ignore[attr-defined]
        key.capped_until = capped.get(key.pk)  # type: ignore[attr-defined]
    return api_keys


def _context(
    account: Account,
    *,
    provider_form: ProviderKeyForm | None = None,
    api_form: ApiKeyForm | None = None,
    new_key: tuple[ApiKey, str] | None = None,
) -> dict[str, Any]:
    return {
        "provider_keys": selectors.provider_keys_for(account=account),
        "api_keys": _with_spend_and_status(account, list(selectors.api_keys_for(account=account))),
        "events": selectors.audit_events_for(account=account),
        "limits": selectors.key_limits_for(account=account),
        "provider_form": provider_form or ProviderKeyForm(),
        "api_form": api_form or ApiKeyForm(account=account),
        "new_key": new_key[0] if new_key else None,
        "new_key_raw": new_key[1] if new_key else None,
    }


def _keys_section(request: AuthedRequest, context: dict[str, Any]) -> HttpResponse:
    """The whole keys section, replacing whatever element the request targeted."""
    response = render(request, f"{TEMPLATE}#keys", context)
    response["HX-Retarget"] = "#keys"
    response["HX-Reswap"] = "outerHTML"
    return response


def _done(request: AuthedRequest, account: Account, message: str) -> HttpResponse:
    if request.htmx:
        return _keys_section(request, _context(account))
    messages.success(request, message)
    return redirect("keys:index")


@login_required
@require_GET
def index(request: AuthedRequest) -> HttpResponse:
    return render(request, TEMPLATE, _context(_account(request)))


@sensitive_post_parameters("key")
@login_required
@require_POST
def provider_key_add(request: AuthedRequest) -> HttpResponse:
    account = _account(request)
    form = ProviderKeyForm(request.POST)
    if form.is_valid():
        try:
            services.provider_key_add(
                account=account,
                actor=request.user,
                raw_key=form.cleaned_data["key"],
                name=form.cleaned_data["name"],
            )
        except services.ProviderKeyInvalid as exc:
            form.add_error("key", exc.message)
        except services.KeyServiceError as exc:
            form.add_error(None, exc.message)
        else:
            return _done(request, account, "OpenAI key connected.")
    if request.htmx:
        return render(request, f"{TEMPLATE}#provider-form", {"provider_form": form})
    return render(request, TEMPLATE, _context(account, provider_form=form))


@login_required
@require_http_methods(["GET", "POST"])
def provider_key_delete(request: AuthedRequest, public_id: uuid.UUID) -> HttpResponse:
    account = _account(request)
    provider_key = get_object_or_404(ProviderKey, account=account, public_id=public_id)
    if request.method == "POST":
        revoked = services.provider_key_delete(provider_key=provider_key, actor=request.user)
        suffix = f" and {revoked} BudgetLLM key(s) using it revoked" if revoked else ""
        return _done(request, account, f"Provider key {provider_key.hint} deleted{suffix}.")
    # GET: the confirmation, naming the bllm_ keys that deleting will revoke.
    active = provider_key.api_keys.filter(revoked_at__isnull=True).order_by("created_at")
    confirm = {"confirm_provider_key": provider_key, "confirm_api_keys": list(active)}
    if request.htmx:
        return render(request, f"{TEMPLATE}#provider-delete-confirm", confirm)
    return render(request, TEMPLATE, _context(account) | confirm)


@login_required
@require_POST
def api_key_create(request: AuthedRequest) -> HttpResponse:
    account = _account(request)
    form = ApiKeyForm(request.POST, account=account)
    if form.is_valid():
        try:
            created = services.api_key_create(
                account=account,
                actor=request.user,
                provider_key=form.cleaned_data["provider_key"],
                name=form.cleaned_data["name"],
            )
        except services.KeyServiceError as exc:
            form.add_error(None, exc.message)
        else:
            # The one response that carries the raw key: render it (never redirect with
            # it) and forbid every cache from keeping a copy.
            context = _context(account, new_key=created)
            response = (
                _keys_section(request, context)
                if request.htmx
                else render(request, TEMPLATE, context)
            )
            add_never_cache_headers(response)
            return response
    if request.htmx:
        return render(request, f"{TEMPLATE}#api-form", {"api_form": form})
    return render(request, TEMPLATE, _context(account, api_form=form))


def _api_key(request: AuthedRequest, public_id: uuid.UUID) -> tuple[Account, ApiKey]:
    account = _account(request)
    api_key = get_object_or_404(
        ApiKey.objects.select_related("account"), account=account, public_id=public_id
    )
    return account, api_key


@login_required
@require_POST
def api_key_revoke(request: AuthedRequest, public_id: uuid.UUID) -> HttpResponse:
    account, api_key = _api_key(request, public_id)
    services.api_key_revoke(api_key=api_key, actor=request.user)
    return _done(request, account, f"Key {services.api_key_label(api_key)} revoked.")


@login_required
@require_POST
def api_key_pause(request: AuthedRequest, public_id: uuid.UUID) -> HttpResponse:
    account, api_key = _api_key(request, public_id)
    services.api_key_set_paused(api_key=api_key, actor=request.user, paused=True)
    return _done(request, account, f"Key {services.api_key_label(api_key)} paused.")


@login_required
@require_POST
def api_key_resume(request: AuthedRequest, public_id: uuid.UUID) -> HttpResponse:
    account, api_key = _api_key(request, public_id)
    services.api_key_set_paused(api_key=api_key, actor=request.user, paused=False)
    return _done(request, account, f"Key {services.api_key_label(api_key)} resumed.")
