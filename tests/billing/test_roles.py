"""Team roles on billing: members see the plan; only owners pay, cancel or choose keys."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Membership, User
from billing.models import Subscription
from tests.conftest import Person

from .factories import subscription


@pytest.fixture
def member(owner: Person) -> Person:
    """Someone whose only account is the owner's, as a member (added by the owner)."""
    user = User.objects.create_user(email="member@example.com")
    Membership.objects.create(account=owner.account, user=user, role=Membership.Role.MEMBER)
    client = Client()
    client.force_login(user, backend="allauth.account.auth_backends.AuthenticationBackend")
    return Person(user=user, account=owner.account, client=client)


def test_a_member_sees_the_plan_without_upgrade_or_cancel_buttons(owner, member) -> None:
    subscription(owner.account, plan="pro")

    html = member.client.get(reverse("billing:page")).content.decode()

    assert 'data-testid="plan-name">Pro<' in html
    assert 'data-testid="owner-only"' in html
    assert reverse("billing:cancel") not in html
    assert reverse("billing:razorpay_subscribe") not in html


def test_the_owner_still_sees_upgrade_and_cancel(owner) -> None:
    subscription(owner.account, plan="pro")

    html = owner.client.get(reverse("billing:page")).content.decode()

    assert reverse("billing:cancel") in html
    assert 'data-testid="owner-only"' not in html


def test_a_member_cannot_start_a_subscription(member) -> None:
    response = member.client.post(reverse("billing:razorpay_subscribe"), {"plan": "team"})

    assert response.status_code == 403
    assert not Subscription.objects.exists()


def test_a_member_cannot_open_a_lemonsqueezy_checkout(member) -> None:
    response = member.client.get(reverse("billing:lemonsqueezy_checkout", args=["team"]))

    assert response.status_code == 403


def test_a_member_cannot_cancel_the_owners_subscription(owner, member) -> None:
    sub = subscription(owner.account, plan="pro", provider="razorpay")

    response = member.client.post(reverse("billing:cancel"))

    assert response.status_code == 403
    sub.refresh_from_db()
    assert sub.cancel_at_period_end is False


def test_a_member_cannot_choose_which_keys_to_keep(member) -> None:
    assert member.client.get(reverse("billing:keys_keep")).status_code == 403
    assert member.client.post(reverse("billing:keys_keep"), {}).status_code == 403
