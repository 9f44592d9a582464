"""The team page (members, roles, invitations) and the nav's account switcher.

Everything is scoped to the account the user acts on: a member or invitation id of any
other account is a 404. Members of the account may look; changing who is in it is for
owners (403: a member knows the account exists). Forms posted by HTMX get the team
section back; without HTMX they redirect to the page.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect

from billing.entitlements import PLANS

from . import team
from .forms import AccountSwitchForm, InviteForm, RoleForm
from .http import AuthedRequest
from .models import Account, Invitation, Membership
from .services import account_for_request, account_is_owner, account_switch, safe_next_url

TEMPLATE = "accounts/team.html"


def _context(
    request: AuthedRequest, account: Account, *, form: InviteForm | None = None, flash: str = ""
) -> dict[str, Any]:
    return {
        "account": account,
        "team": team.team_for(account=account),
        "is_owner": account_is_owner(user=request.user, account=account),
        "team_enabled": team.team_enabled(account),
        "team_plan": PLANS["team"],
        "form": form or InviteForm(),
        "roles": Membership.Role.choices,
        "flash": flash,
    }


def _page(
    request: AuthedRequest,
    account: Account,
    *,
    form: InviteForm | None = None,
    flash: str = "",
    status: int = 200,
) -> HttpResponse:
    template = f"{TEMPLATE}#team_section" if request.htmx else TEMPLATE
    return render(
        request, template, _context(request, account, form=form, flash=flash), status=status
    )


def _done(request: AuthedRequest, account: Account, text: str) -> HttpResponse:
    if request.htmx:
        return _page(request, account, flash=text)
    messages.success(request, text)
    return redirect("team")


def _refused(request: AuthedRequest, account: Account, exc: team.TeamError) -> HttpResponse:
    if isinstance(exc, team.NotOwner):
        raise PermissionDenied(str(exc))
    if request.htmx:
        return _page(request, account, flash=str(exc))
    messages.error(request, str(exc))
    return redirect("team")


def _membership(account: Account, **lookup: Any) -> Membership:
    return get_object_or_404(
        Membership.objects.select_related("account", "user"), account=account, **lookup
    )


@login_required
def team_page(request: AuthedRequest) -> HttpResponse:
    return _page(request, account_for_request(request))


@login_required
@require_POST
def team_invite(request: AuthedRequest) -> HttpResponse:
    account = account_for_request(request)
    if not account_is_owner(user=request.user, account=account):
        raise PermissionDenied("Only an owner can invite people.")
    form = InviteForm(request.POST)
    status = 200
    if form.is_valid():
        email = form.cleaned_data["email"]
        try:
            team.team_invite(request=request, account=account, actor=request.user, email=email)
        except team.InviteRateLimited as exc:
            form.add_error(None, str(exc))
            status = 429
        except team.TeamError as exc:
            if isinstance(exc, team.NotOwner):
                raise PermissionDenied(str(exc)) from exc
            form.add_error("email", str(exc))
        else:
            # The same words whether or not the address has a BudgetLLM account.
            return _done(request, account, f"Invitation sent to {email}.")
    # Invalid input re-renders the form with its errors (status 200).
    return _page(request, account, form=form, status=status)


@login_required
@require_POST
def invitation_revoke(request: AuthedRequest, public_id: uuid.UUID) -> HttpResponse:
    account = account_for_request(request)
    invitation = get_object_or_404(Invitation, account=account, public_id=public_id)
    try:
        team.invitation_revoke(invitation=invitation, actor=request.user)
    except team.TeamError as exc:
        return _refused(request, account, exc)
    return _done(request, account, f"Invitation for {invitation.email} withdrawn.")


@login_required
@require_POST
def member_role(request: AuthedRequest, public_id: uuid.UUID) -> HttpResponse:
    account = account_for_request(request)
    membership = _membership(account, public_id=public_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        return _refused(request, account, team.TeamError("Choose owner or member."))
    role = form.cleaned_data["role"]
    try:
        team.member_set_role(membership=membership, actor=request.user, role=role)
    except team.TeamError as exc:
        return _refused(request, account, exc)
    return _done(
        request, account, f"{membership.user.email} is now {Membership.Role(role).label.lower()}."
    )


@login_required
@require_POST
def member_remove(request: AuthedRequest, public_id: uuid.UUID) -> HttpResponse:
    account = account_for_request(request)
    membership = _membership(account, public_id=public_id)
    if membership.user_id == request.user.pk:
        return team_leave(request)
    try:
        team.member_remove(membership=membership, actor=request.user)
    except team.TeamError as exc:
        return _refused(request, account, exc)
    return _done(request, account, f"{membership.user.email} was removed from the team.")


@login_required
@require_POST
def team_leave(request: AuthedRequest) -> HttpResponse:
    account = account_for_request(request)
    membership = _membership(account, user=request.user)
    try:
        team.member_remove(membership=membership, actor=request.user)
    except team.TeamError as exc:
        return _refused(request, account, exc)
    messages.success(request, f"You left {account}.")
    target = reverse("dashboard")
    if request.htmx:
        return HttpResponseClientRedirect(target)
    return redirect(target)


@login_required
@require_POST
def account_switch_view(request: AuthedRequest) -> HttpResponse:
    """The nav's switcher: act on another account the user belongs to (404 otherwise)."""
    form = AccountSwitchForm(request.POST)
    if not form.is_valid():
        raise Http404
    try:
        account = account_switch(request=request, public_id=form.cleaned_data["account"])
    except Account.DoesNotExist as exc:
        raise Http404 from exc
    messages.info(request, f"You are now acting on {account}.")
    target = safe_next_url(request=request, url=form.cleaned_data["next"]) or reverse("dashboard")
    if request.htmx:
        return HttpResponseClientRedirect(target)
    return redirect(target)
