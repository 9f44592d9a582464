"""The acting account: the nav's switcher, and every web page scoped to the picked account.

The teammate fixture is a member of the owner's account and owner of their own one.
"""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import Account, Membership
from budgets.models import Cap
from keys.models import ApiKey
from tests.billing.factories import api_key
from tests.conftest import Person

from .conftest import acting_account_id

pytestmark = pytest.mark.django_db


def _switch(person: Person, account: Account, next_url: str = "") -> object:
    return person.client.post(
        reverse("account_switch"), {"account": str(account.public_id), "next": next_url}
    )


def _named_key(account: Account, name: str, n: int) -> ApiKey:
    key = api_key(account, None, n)
    key.name = name
    key.save(update_fields=["name"])
    return key


def test_by_default_a_user_acts_on_their_own_account(owner, teammate) -> None:
    _named_key(teammate.account, "personal-key", 1)

    html = teammate.client.get(reverse("keys:index")).content.decode()

    assert "personal-key" in html
    assert acting_account_id(teammate.client) is None


def test_the_switcher_lists_every_account_of_the_user_and_only_theirs(
    owner, teammate, outsider
) -> None:
    html = teammate.client.get(reverse("team")).content.decode()
    switcher = html.split('data-testid="account-switcher"')[1].split("</form>")[0]

    assert str(owner.account.public_id) in switcher
    assert str(teammate.account.public_id) in switcher
    assert str(outsider.account.public_id) not in switcher
    assert "csrfmiddlewaretoken" in switcher


def test_someone_with_one_account_sees_no_switcher(outsider) -> None:
    html = outsider.client.get(reverse("team")).content.decode()

    assert 'data-testid="account-switcher"' not in html


def test_a_member_acting_on_the_team_sees_the_teams_keys_not_their_own(owner, teammate) -> None:
    _named_key(owner.account, "team-key", 1)
    _named_key(teammate.account, "personal-key", 2)

    response = _switch(teammate, owner.account, next_url=reverse("keys:index"))

    assert response.status_code == 302
    assert response["Location"] == reverse("keys:index")
    assert acting_account_id(teammate.client) == str(owner.account.public_id)
    html = teammate.client.get(reverse("keys:index")).content.decode()
    assert "team-key" in html and "personal-key" not in html
    # And back.
    _switch(teammate, teammate.account)
    html = teammate.client.get(reverse("keys:index")).content.decode()
    assert "personal-key" in html and "team-key" not in html


def test_the_switcher_refuses_an_account_you_do_not_belong_to(owner, teammate, outsider) -> None:
    _switch(teammate, owner.account)

    response = _switch(teammate, outsider.account)
    garbage = teammate.client.post(reverse("account_switch"), {"account": "not-a-uuid"})

    assert response.status_code == 404
    assert garbage.status_code == 404
    assert acting_account_id(teammate.client) == str(owner.account.public_id)


def test_the_switcher_never_redirects_off_site(owner, teammate) -> None:
    response = _switch(teammate, owner.account, next_url="https://evil.example/")

    assert response["Location"] == reverse("dashboard")


def test_lookups_follow_the_acting_account(owner, teammate) -> None:
    team_key = _named_key(owner.account, "team-key", 1)
    personal = _named_key(teammate.account, "personal-key", 2)
    _switch(teammate, owner.account)

    foreign = teammate.client.post(reverse("keys:api_revoke", args=[personal.public_id]))
    own = teammate.client.post(reverse("keys:api_revoke", args=[team_key.public_id]))

    assert foreign.status_code == 404
    assert own.status_code in (200, 302)
    team_key.refresh_from_db()
    personal.refresh_from_db()
    assert team_key.revoked_at is not None and personal.revoked_at is None


def test_a_member_sets_caps_and_sees_the_dashboard_of_the_team(owner, teammate) -> None:
    _named_key(owner.account, "team-key", 1)
    _switch(teammate, owner.account)

    response = teammate.client.post(
        reverse("caps"), {"scope": "account", "period": "day", "limit_usd": "5"}
    )
    dashboard = teammate.client.get(reverse("dashboard"))

    assert response.status_code == 302
    assert Cap.objects.filter(account=owner.account, limit_micros=5_000_000).exists()
    assert not Cap.objects.filter(account=teammate.account).exists()
    assert dashboard.status_code == 200 and b"team-key" in dashboard.content


def test_a_member_can_pause_the_account_but_only_an_owner_resumes_it(owner, teammate) -> None:
    _named_key(owner.account, "team-key", 1)
    _switch(teammate, owner.account)

    paused = teammate.client.post(reverse("account_pause"))
    owner.account.refresh_from_db()
    assert paused.status_code == 302 and owner.account.paused_at is not None
    html = teammate.client.get(reverse("dashboard")).content.decode()
    assert 'data-testid="resume-owner-only"' in html

    refused = teammate.client.post(reverse("account_resume"))
    owner.account.refresh_from_db()
    assert refused.status_code == 403 and owner.account.paused_at is not None

    resumed = owner.client.post(reverse("account_resume"))
    owner.account.refresh_from_db()
    assert resumed.status_code == 302 and owner.account.paused_at is None


def test_only_an_owner_changes_the_accounts_time_zone(owner, teammate) -> None:
    _switch(teammate, owner.account)

    page = teammate.client.get(reverse("account_settings")).content.decode()
    response = teammate.client.post(reverse("account_settings"), {"timezone": "Asia/Kolkata"})

    assert 'data-testid="timezone-readonly"' in page
    assert response.status_code == 403
    owner.account.refresh_from_db()
    assert owner.account.timezone == "UTC"


def test_a_member_of_the_team_sees_its_plan_but_cannot_pay(owner, teammate, on_team) -> None:
    _switch(teammate, owner.account)

    page = teammate.client.get(reverse("billing:page")).content.decode()
    subscribe = teammate.client.post(reverse("billing:razorpay_subscribe"), {"plan": "team"})

    assert 'data-testid="owner-only"' in page
    assert subscribe.status_code == 403


def test_a_suspended_membership_cannot_be_picked_and_falls_back(owner, teammate) -> None:
    _named_key(owner.account, "team-key", 1)
    _switch(teammate, owner.account)
    Membership.objects.filter(account=owner.account, user=teammate.user).update(
        suspended_at=timezone.now()
    )

    html = teammate.client.get(reverse("keys:index")).content.decode()
    again = _switch(teammate, owner.account)

    assert "team-key" not in html
    assert acting_account_id(teammate.client) is None
    assert again.status_code == 404


def test_deleting_a_co_owner_keeps_the_team_account(owner, teammate) -> None:
    Membership.objects.filter(account=owner.account, user=teammate.user).update(role="owner")
    _named_key(owner.account, "team-key", 1)

    response = owner.client.post(reverse("account_delete"), {"confirm_email": owner.user.email})

    assert response.status_code == 302
    assert Account.objects.filter(pk=owner.account.pk).exists()
    assert ApiKey.objects.filter(account=owner.account).exists()
    assert list(
        Membership.objects.filter(account=owner.account).values_list("user", flat=True)
    ) == [teammate.user.pk]


def test_the_delete_page_warns_a_sole_owner_that_their_team_goes_too(owner, teammate) -> None:
    html = owner.client.get(reverse("account_delete")).content.decode()

    assert 'data-testid="delete-teams"' in html and "(2 people)" in html
