"""Leaving the Team plan: members are kept but lose access; the owner is told; upgrading
to Team again gives it back. Driven by signed Razorpay webhooks, as in production."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail
from django.core.cache import cache
from django.urls import reverse

from accounts.models import Membership, User
from accounts.team import team_invites_accept
from billing.entitlements import plan_for
from billing.models import BillingNotice, Subscription
from tests.conftest import Person

from . import payloads as p
from .conftest import post_razorpay
from .factories import api_key

SUB = "sub_RzpTeam0000001"
T0 = 1_767_225_600  # 2026-01-01 00:00 UTC


@pytest.fixture
def team_sub(owner: Person) -> Subscription:
    sub = Subscription.objects.create(
        account=owner.account, provider="razorpay", provider_subscription_id=SUB, plan="team"
    )
    charged = p.rzp_event(
        "subscription.charged",
        subscription=p.rzp_subscription(
            sub_id=SUB,
            status="active",
            plan_id=p.RAZORPAY_PLAN_TEAM,
            current_start=T0,
            current_end=T0 + 30 * 86400,
            paid_count=1,
        ),
        payment=p.rzp_payment(pay_id="pay_Team000000001", created_at=T0 + 55),
        created_at=T0 + 60,
    )
    assert post_razorpay(charged, event_id="evt_team_charged").status_code == 200
    assert plan_for(owner.account) == "team"
    return sub


def _event(kind: str, status: str, at: int) -> dict[str, Any]:
    return p.rzp_event(
        f"subscription.{kind}",
        subscription=p.rzp_subscription(sub_id=SUB, status=status, plan_id=p.RAZORPAY_PLAN_TEAM),
        created_at=at,
    )


def _switch(person: Person, owner: Person) -> int:
    response = person.client.post(
        reverse("account_switch"), {"account": str(owner.account.public_id)}
    )
    return response.status_code


def test_halted_team_keeps_members_without_access_and_tells_the_owner(
    owner, teammate, team_sub, django_capture_on_commit_callbacks
) -> None:
    team_key = api_key(owner.account, None, 1)
    assert _switch(teammate, owner) == 302

    with django_capture_on_commit_callbacks(execute=True):
        assert (
            post_razorpay(_event("halted", "halted", T0 + 999), event_id="evt_h").status_code == 200
        )

    membership = Membership.objects.get(account=owner.account, user=teammate.user)
    assert membership.role == Membership.Role.MEMBER  # kept, not deleted
    assert membership.suspended_at is not None
    # The member's next request falls back to their own account; they cannot switch back.
    keys_page = teammate.client.get(reverse("keys:index")).content.decode()
    assert f"bllm_{team_key.prefix}" not in keys_page
    assert _switch(teammate, owner) == 404
    # The owner keeps access and is told, on the site and by mail.
    notice = BillingNotice.objects.get(account=owner.account)
    assert "Team members lost access" in notice.message
    assert teammate.user.email in notice.message
    assert [m.to for m in mail.outbox] == [[owner.user.email]]
    assert teammate.user.email in str(mail.outbox[0].body)
    team_page = owner.client.get(reverse("team")).content.decode()
    assert 'data-testid="member-suspended"' in team_page
    assert 'data-testid="team-upsell"' in team_page


def test_upgrading_to_team_again_restores_the_members(owner, teammate, team_sub) -> None:
    post_razorpay(_event("halted", "halted", T0 + 999), event_id="evt_h")
    assert _switch(teammate, owner) == 404

    post_razorpay(_event("activated", "active", T0 + 2000), event_id="evt_again")

    assert plan_for(owner.account) == "team"
    membership = Membership.objects.get(account=owner.account, user=teammate.user)
    assert membership.suspended_at is None
    assert _switch(teammate, owner) == 302


def test_owners_keep_access_and_can_still_remove_suspended_members(
    owner, teammate, team_sub
) -> None:
    post_razorpay(_event("halted", "halted", T0 + 999), event_id="evt_h")
    membership = Membership.objects.get(account=owner.account, user=teammate.user)

    response = owner.client.post(reverse("team_member_remove", args=[membership.public_id]))

    assert response.status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert owner.client.get(reverse("keys:index")).status_code == 200


def test_an_invitation_accepted_after_the_downgrade_joins_suspended(
    owner, team_sub, django_capture_on_commit_callbacks
) -> None:
    cache.clear()  # invitation rate-limit counters live in the (possibly shared) cache
    with django_capture_on_commit_callbacks(execute=True):
        owner.client.post(reverse("team_invite"), {"email": "late@example.com"})
    post_razorpay(_event("halted", "halted", T0 + 999), event_id="evt_h")

    joined = team_invites_accept(user=User.objects.get(email="late@example.com"))

    assert joined == [owner.account]
    membership = Membership.objects.get(account=owner.account, user__email="late@example.com")
    assert membership.suspended_at is not None
