"""Teams: invitations, roles and members of an account.

An owner of a Team-plan account invites an email address. The invitation mail holds an
ordinary sign-in link (the magic-link machinery of `services`); signing in as that
address by any means (the link, a code, a later sign-in) while the invitation is open
turns it into a member's `Membership`, once. There is no second way to sign in.

Roles: members use the account (dashboard, keys, caps, alerts, pausing); owners also
decide who is in it, what it pays for, its time zone, and resume a paused account.
An account always keeps at least one owner.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from allauth.core import ratelimit
from django.conf import settings
from django.contrib import messages
from django.core.mail import send_mail
from django.db import transaction
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from billing.entitlements import entitlements_for

from .models import Account, Invitation, Membership, User, normalise_email
from .services import account_is_owner, account_switch, magic_link_url, user_get_or_create


class TeamError(Exception):
    """A team change that is not allowed; the message says why, for the person."""


class NotOwner(TeamError):
    """Only an owner may do this (views answer 403: the member knows the account)."""


class InviteRateLimited(TeamError):
    pass


def team_enabled(account: Account) -> bool:
    """Whether the account's plan has team members (the Team plan)."""
    return entitlements_for(account).team_members


def _require_owner(*, account: Account, actor: User) -> None:
    if not account_is_owner(user=actor, account=account):
        raise NotOwner("Only an owner of this account can do that.")


def _require_team(account: Account) -> None:
    if not team_enabled(account):
        raise TeamError("Team members come with the Team plan. Upgrade on the billing page.")


# --- Reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeamView:
    memberships: list[Membership]
    invitations: list[Invitation]  # open and unexpired, newest first
    owners: int


def team_for(*, account: Account) -> TeamView:
    memberships = list(
        Membership.objects.filter(account=account)
        .select_related("user")
        .order_by("-role", "created_at")  # owners first
    )
    invitations = list(
        Invitation.objects.filter(
            account=account,
            accepted_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=timezone.now(),
        ).order_by("-created_at")
    )
    owners = sum(1 for m in memberships if m.role == Membership.Role.OWNER)
    return TeamView(memberships=memberships, invitations=invitations, owners=owners)


# --- Inviting -------------------------------------------------------------------------------


def team_invite(*, request: HttpRequest, account: Account, actor: User, email: str) -> Invitation:
    """Invite `email` to `account` as a member and mail them a sign-in link.

    The answer is the same whether or not the address has a BudgetLLM account: an unknown
    address gets a user and personal account, exactly as the sign-in form does for it.
    Raises NotOwner, TeamError (no Team plan, already a member), InviteRateLimited.
    """
    _require_owner(account=account, actor=actor)
    _require_team(account)
    email = normalise_email(email)
    if Membership.objects.filter(account=account, user__email=email).exists():
        raise TeamError(f"{email} is already in this team.")
    # Per inviting user and per invited address, counted in the shared cache like the
    # login mails; checked before anything is written or sent.
    if not ratelimit.consume(request, action="team_invite", key=email, user=actor):
        raise InviteRateLimited(
            "Too many invitations were sent recently (by you, or to this address). "
            "Please try again later."
        )
    invitee, _ = user_get_or_create(email=email, timezone_name=account.timezone)
    expires_at = timezone.now() + dt.timedelta(days=settings.TEAM_INVITE_MAX_AGE_DAYS)
    with transaction.atomic():
        # Inviting again refreshes the open invitation instead of adding a second one.
        invitation = (
            Invitation.objects.select_for_update()
            .filter(account=account, email=email, accepted_at__isnull=True, revoked_at__isnull=True)
            .first()
        )
        if invitation is None:
            invitation = Invitation.objects.create(
                account=account, email=email, invited_by=actor, expires_at=expires_at
            )
        else:
            invitation.invited_by = actor
            invitation.expires_at = expires_at
            invitation.save(update_fields=["invited_by", "expires_at"])
    link = magic_link_url(user=invitee, next_url=reverse("team"))
    context = {
        "inviter": actor.email,
        "team": account.name or actor.email,
        "email": email,
        "magic_link": link,
        "login_url": settings.SITE_URL + reverse("account_login"),
        "expiry_minutes": settings.MAGIC_LINK_MAX_AGE // 60,
        "expires_at": invitation.expires_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "invite_days": settings.TEAM_INVITE_MAX_AGE_DAYS,
    }
    subject = render_to_string("accounts/email/team_invite_subject.txt", context).strip()
    body = render_to_string("accounts/email/team_invite_message.txt", context)
    transaction.on_commit(lambda: send_mail(subject, body, None, [email]))
    return invitation


def invitation_revoke(*, invitation: Invitation, actor: User) -> None:
    _require_owner(account=invitation.account, actor=actor)
    Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True).update(
        revoked_at=timezone.now()
    )


def team_invites_accept(*, user: User) -> list[Account]:
    """Turn the open invitations for `user`'s address into memberships; the accounts joined.

    Called on every sign-in. Each invitation is claimed with a conditional UPDATE, so it
    is used once even if two sign-ins race. An account that left the Team plan since the
    invitation was sent gets the member suspended, like its other members.
    """
    now = timezone.now()
    joined: list[Account] = []
    invitations = Invitation.objects.filter(
        email=normalise_email(user.email),
        accepted_at__isnull=True,
        revoked_at__isnull=True,
        expires_at__gt=now,
    ).select_related("account")
    for invitation in invitations:
        with transaction.atomic():
            claimed = Invitation.objects.filter(
                pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True
            ).update(accepted_at=now, accepted_by=user)
            if not claimed:
                continue
            _membership, created = Membership.objects.get_or_create(
                account=invitation.account,
                user=user,
                defaults={
                    "role": Membership.Role.MEMBER,
                    "suspended_at": None if team_enabled(invitation.account) else now,
                },
            )
            if created:
                joined.append(invitation.account)
    return joined


# --- Changing members -------------------------------------------------------------------


def _owners_locked(account: Account) -> list[Membership]:
    """The account's owner rows, locked: two owners demoting or removing each other at
    once must not leave the account with none."""
    return list(
        Membership.objects.select_for_update().filter(account=account, role=Membership.Role.OWNER)
    )


@transaction.atomic
def member_set_role(*, membership: Membership, actor: User, role: str) -> None:
    account = membership.account
    _require_owner(account=account, actor=actor)
    _require_team(account)
    if role not in Membership.Role.values:
        raise TeamError("Unknown role.")
    owners = _owners_locked(account)
    if (
        membership.role == Membership.Role.OWNER
        and role != Membership.Role.OWNER
        and len(owners) <= 1
    ):
        raise TeamError(
            "An account always keeps at least one owner: make someone else owner first."
        )
    Membership.objects.filter(pk=membership.pk).update(role=role)


@transaction.atomic
def member_remove(*, membership: Membership, actor: User) -> None:
    """An owner removes someone, or a person leaves (`actor` is the member themself).

    Keys, caps and usage belong to the account and stay; the person loses access at once.
    """
    account = membership.account
    if membership.user_id != actor.pk:
        _require_owner(account=account, actor=actor)
    owners = _owners_locked(account)
    if membership.role == Membership.Role.OWNER and len(owners) <= 1:
        raise TeamError(
            "An account always keeps at least one owner: make someone else owner first"
            " (or delete the account from Settings)."
        )
    membership.delete()


# --- Plan changes (called by billing) -----------------------------------------------------


def team_members_suspend(*, account: Account) -> list[str]:
    """The plan no longer has team members: members keep their place but lose access.

    Nothing is deleted, so upgrading to Team again restores them. Owners keep access.
    Returns the emails suspended.
    """
    rows = Membership.objects.filter(
        account=account, role=Membership.Role.MEMBER, suspended_at__isnull=True
    )
    emails = list(rows.order_by("created_at").values_list("user__email", flat=True))
    rows.update(suspended_at=timezone.now())
    return emails


def team_members_restore(*, account: Account) -> list[str]:
    """The plan has team members again: give suspended members their access back."""
    if not team_enabled(account):
        return []
    rows = Membership.objects.filter(account=account, suspended_at__isnull=False)
    emails = list(rows.order_by("created_at").values_list("user__email", flat=True))
    rows.update(suspended_at=None)
    return emails


def team_invites_accept_on_login(*, request: HttpRequest, user: User) -> list[Account]:
    """Accept `user`'s open invitations for the signed-in `request`: act on the team just
    joined and say so (the invitation's link lands on the team page)."""
    joined = team_invites_accept(user=user)
    if joined:
        try:
            account_switch(request=request, public_id=joined[-1].public_id)
        except Account.DoesNotExist:
            pass  # joined as a suspended member: the account is not on Team right now
        names = ", ".join(a.name or str(a.public_id) for a in joined)
        messages.success(request, f"You joined {names}. Switch accounts from the menu at the top.")
    return joined
