"""Team invitations and members: invite → sign in → membership; expiry, single use,
rate limits, roles (owners manage people, at least one owner remains), 403/404."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Invitation, Membership, User
from tests.conftest import Person

from .conftest import acting_account_id, last_login_mail, request_login, signed_in_email

pytestmark = pytest.mark.django_db


@pytest.fixture
def invite(owner: Person, on_team: Any, django_capture_on_commit_callbacks: Any):  # type: ignore[no-untyped-def]
    """Post the invite form as the owner; mails are sent (after commit)."""

    def _invite(email: str, client: Client | None = None) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return (client or owner.client).post(reverse("team_invite"), {"email": email})

    return _invite


def _mail_link(msg: mail.EmailMessage) -> str:
    match = re.search(r"https?://\S+(/accounts/login/link/\S+)", str(msg.body))
    assert match, msg.body
    return match.group(1)


def _join_by_invitation_link(email: str) -> Client:
    """The invitee opens the link from the invitation mail in a fresh browser and clicks."""
    msg = [m for m in mail.outbox if m.to == [email]][-1]
    link = _mail_link(msg)
    browser = Client()
    confirm = browser.get(link)
    # Not the browser that asked for a mail: a click is needed (scanners consume nothing).
    assert confirm.status_code == 200 and b"Continue as" in confirm.content
    response = browser.post(link)
    assert response.status_code == 302
    assert response["Location"] == reverse("team")
    return browser


def _sign_in_normally(email: str) -> Client:
    browser = Client()
    request_login(browser, email)
    browser.get(last_login_mail(mail.outbox).link_path)
    assert signed_in_email(browser) == email
    return browser


def _members_section(client: Client) -> str:
    html = client.get(reverse("team")).content.decode()
    return html.split('id="members"')[1].split("</section>")[0]


def _is_member(email: str, person: Person) -> bool:
    return Membership.objects.filter(
        account=person.account, user__email=email, role=Membership.Role.MEMBER
    ).exists()


# --- Invite → sign in → membership ----------------------------------------------------


def test_invitee_joins_as_member_by_the_sign_in_link_in_the_invitation(owner, invite) -> None:
    response = invite("New.Dev@Example.com")

    assert response.status_code == 302
    assert len(mail.outbox) == 1
    msg = mail.outbox[0]
    assert msg.to == ["new.dev@example.com"]
    assert "owner@example.com invited you" in msg.subject
    assert "stays open for 7 days" in str(msg.body)
    assert not _is_member("new.dev@example.com", owner)

    browser = _join_by_invitation_link("new.dev@example.com")

    assert signed_in_email(browser) == "new.dev@example.com"
    assert _is_member("new.dev@example.com", owner)
    invitation = Invitation.objects.get(email="new.dev@example.com")
    assert invitation.accepted_at is not None
    assert invitation.accepted_by == User.objects.get(email="new.dev@example.com")
    # They land on the team they joined, acting on it.
    assert acting_account_id(browser) == str(owner.account.public_id)
    page = browser.get(reverse("team")).content.decode()
    assert "You joined" in page and "owner@example.com" in page


def test_any_later_sign_in_as_the_address_accepts_an_open_invitation(owner, invite) -> None:
    invite("late@example.com")
    # The mail's link lasts 15 minutes; the invitation lasts days.
    with time_machine.travel(timezone.now() + dt.timedelta(days=2)):
        _sign_in_normally("late@example.com")

    assert _is_member("late@example.com", owner)


def test_expired_invitation_does_not_add_anyone(owner, invite) -> None:
    invite("slow@example.com")
    link = _mail_link(mail.outbox[-1])
    with time_machine.travel(timezone.now() + dt.timedelta(days=8)):
        assert Client().post(link).status_code == 410  # the sign-in link is long dead
        _sign_in_normally("slow@example.com")

    assert not _is_member("slow@example.com", owner)
    assert Invitation.objects.get(email="slow@example.com").accepted_at is None


def test_invitation_is_single_use_a_removed_member_is_not_re_added_by_signing_in(
    owner, invite
) -> None:
    invite("once@example.com")
    _join_by_invitation_link("once@example.com")
    membership = Membership.objects.get(account=owner.account, user__email="once@example.com")
    owner.client.post(reverse("team_member_remove", args=[membership.public_id]))
    assert not _is_member("once@example.com", owner)

    _sign_in_normally("once@example.com")

    assert not _is_member("once@example.com", owner)


def test_the_sign_in_link_of_an_invitation_works_once(owner, invite) -> None:
    invite("dev@example.com")
    link = _mail_link(mail.outbox[-1])
    assert Client().post(link).status_code == 302

    assert Client().post(link).status_code == 410


def test_withdrawn_invitation_does_not_add_anyone(owner, invite) -> None:
    invite("nope@example.com")
    invitation = Invitation.objects.get(email="nope@example.com")

    response = owner.client.post(reverse("team_invitation_revoke", args=[invitation.public_id]))

    assert response.status_code == 302
    _sign_in_normally("nope@example.com")
    assert not _is_member("nope@example.com", owner)


def test_inviting_again_refreshes_the_open_invitation(owner, invite) -> None:
    invite("twice@example.com")
    invite("twice@example.com")

    assert Invitation.objects.filter(email="twice@example.com").count() == 1
    assert len(mail.outbox) == 2


def test_the_answer_is_the_same_whether_or_not_the_address_has_an_account(
    owner, outsider, invite
) -> None:
    known = invite(outsider.user.email)
    unknown = invite("nobody@example.com")

    assert known.status_code == unknown.status_code == 302
    assert known["Location"] == unknown["Location"]
    known_body, unknown_body = (str(m.body) for m in mail.outbox)

    def shape(body: str, email: str) -> str:
        return re.sub(r"/accounts/login/link/\S+", "LINK", body.replace(email, "EMAIL"))

    assert shape(known_body, outsider.user.email) == shape(unknown_body, "nobody@example.com")


def test_inviting_a_current_member_says_so_and_sends_nothing(owner, teammate, invite) -> None:
    response = invite(teammate.user.email)

    assert response.status_code == 200
    assert b"already in this team" in response.content
    assert mail.outbox == []


def test_invitations_are_rate_limited_per_invited_address(owner, invite, settings) -> None:
    for _ in range(3):
        assert invite("target@example.com").status_code == 302

    response = invite("target@example.com")

    assert response.status_code == 429
    assert b"Too many invitations" in response.content
    assert len(mail.outbox) == 3


def test_invitations_are_rate_limited_per_inviting_owner(owner, invite) -> None:
    for n in range(20):
        assert invite(f"dev{n}@example.com").status_code == 302

    assert invite("dev20@example.com").status_code == 429
    assert not Invitation.objects.filter(email="dev20@example.com").exists()


def test_invalid_email_re_renders_the_form_with_status_200(owner, invite) -> None:
    response = invite("not an email")

    assert response.status_code == 200
    assert b"Enter a valid email address" in response.content
    assert not Invitation.objects.exists()


def test_htmx_invite_answers_with_the_team_section(owner, on_team) -> None:
    response = owner.client.post(
        reverse("team_invite"), {"email": "hx@example.com"}, headers={"HX-Request": "true"}
    )

    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="team">')
    assert "Invitation sent to hx@example.com" in html
    assert "hx@example.com" in html.split("Waiting for sign-in")[1]


# --- Plans --------------------------------------------------------------------------------


def test_without_the_team_plan_the_page_shows_what_team_adds_and_an_upgrade_link(owner) -> None:
    html = owner.client.get(reverse("team")).content.decode()

    assert 'data-testid="team-upsell"' in html
    assert f'href="{reverse("billing:page")}"' in html
    assert reverse("team_invite") not in html


def test_without_the_team_plan_inviting_is_refused(owner) -> None:
    response = owner.client.post(reverse("team_invite"), {"email": "dev@example.com"})

    assert response.status_code == 200
    assert b"Team plan" in response.content
    assert not Invitation.objects.exists()
    assert mail.outbox == []


# --- Who may do what ------------------------------------------------------------------------


def _act_on(person: Person, account_owner: Person) -> None:
    response = person.client.post(
        reverse("account_switch"), {"account": str(account_owner.account.public_id)}
    )
    assert response.status_code == 302


def test_a_member_sees_the_team_but_cannot_invite(owner, teammate, on_team) -> None:
    _act_on(teammate, owner)

    page = teammate.client.get(reverse("team")).content.decode()
    response = teammate.client.post(reverse("team_invite"), {"email": "x@example.com"})

    assert "owner@example.com" in page and reverse("team_invite") not in page
    assert response.status_code == 403
    assert not Invitation.objects.exists()


def test_a_member_cannot_remove_or_promote_anyone(owner, teammate, on_team) -> None:
    _act_on(teammate, owner)
    owner_membership = Membership.objects.get(account=owner.account, user=owner.user)

    removed = teammate.client.post(reverse("team_member_remove", args=[owner_membership.public_id]))
    mine = Membership.objects.get(account=owner.account, user=teammate.user)
    promoted = teammate.client.post(
        reverse("team_member_role", args=[mine.public_id]), {"role": "owner"}
    )

    assert removed.status_code == 403
    assert promoted.status_code == 403
    mine.refresh_from_db()
    assert mine.role == Membership.Role.MEMBER
    assert Membership.objects.filter(pk=owner_membership.pk).exists()


def test_a_member_cannot_withdraw_an_invitation(owner, teammate, invite) -> None:
    invite("pending@example.com")
    _act_on(teammate, owner)
    invitation = Invitation.objects.get()

    response = teammate.client.post(reverse("team_invitation_revoke", args=[invitation.public_id]))

    assert response.status_code == 403
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


def test_an_outsider_gets_404_for_another_accounts_members_and_invitations(
    owner, teammate, outsider, invite
) -> None:
    invite("pending@example.com")
    membership = Membership.objects.get(account=owner.account, user=teammate.user)
    invitation = Invitation.objects.get()

    responses = [
        outsider.client.post(reverse("team_member_remove", args=[membership.public_id])),
        outsider.client.post(
            reverse("team_member_role", args=[membership.public_id]), {"role": "owner"}
        ),
        outsider.client.post(reverse("team_invitation_revoke", args=[invitation.public_id])),
    ]

    assert [r.status_code for r in responses] == [404, 404, 404]
    assert Membership.objects.filter(pk=membership.pk, role="member").exists()
    assert Invitation.objects.get().revoked_at is None


def test_the_owner_of_the_team_gets_404_for_ids_while_acting_on_another_account(
    owner, teammate, on_team
) -> None:
    """Lookups follow the acting account: the teammate's own account's rows are not
    reachable while acting on the team, even for someone who owns both places' data."""
    own = Membership.objects.get(account=teammate.account, user=teammate.user)
    _act_on(teammate, owner)

    response = teammate.client.post(
        reverse("team_member_role", args=[own.public_id]), {"role": "member"}
    )

    assert response.status_code == 404


def test_owner_changes_roles_and_removes_members(owner, teammate, on_team) -> None:
    membership = Membership.objects.get(account=owner.account, user=teammate.user)

    promoted = owner.client.post(
        reverse("team_member_role", args=[membership.public_id]), {"role": "owner"}
    )
    membership.refresh_from_db()
    assert promoted.status_code == 302 and membership.role == Membership.Role.OWNER

    removed = owner.client.post(reverse("team_member_remove", args=[membership.public_id]))
    assert removed.status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    # The teammate keeps their own account.
    assert Membership.objects.filter(account=teammate.account, user=teammate.user).exists()


def test_the_last_owner_cannot_step_down_or_leave(owner, teammate, on_team) -> None:
    mine = Membership.objects.get(account=owner.account, user=owner.user)

    demoted = owner.client.post(
        reverse("team_member_role", args=[mine.public_id]), {"role": "member"}
    )
    left = owner.client.post(reverse("team_leave"))

    assert demoted.status_code == 302 and left.status_code == 302
    mine.refresh_from_db()
    assert mine.role == Membership.Role.OWNER
    page = owner.client.get(reverse("team")).content.decode()
    assert "at least one owner" in page


def test_with_two_owners_one_may_step_down(owner, teammate, on_team) -> None:
    Membership.objects.filter(account=owner.account, user=teammate.user).update(role="owner")
    mine = Membership.objects.get(account=owner.account, user=owner.user)

    owner.client.post(reverse("team_member_role", args=[mine.public_id]), {"role": "member"})

    mine.refresh_from_db()
    assert mine.role == Membership.Role.MEMBER
    assert Membership.objects.filter(account=owner.account, role="owner").count() == 1


def test_a_member_can_leave_and_then_acts_on_their_own_account(owner, teammate, on_team) -> None:
    _act_on(teammate, owner)

    response = teammate.client.post(reverse("team_leave"))

    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard")
    assert not Membership.objects.filter(account=owner.account, user=teammate.user).exists()
    html = _members_section(teammate.client)
    assert "teammate@example.com" in html and "owner@example.com" not in html


def test_removing_a_member_takes_their_access_away_at_once(owner, teammate, on_team) -> None:
    _act_on(teammate, owner)
    membership = Membership.objects.get(account=owner.account, user=teammate.user)

    owner.client.post(reverse("team_member_remove", args=[membership.public_id]))

    assert "owner@example.com" not in _members_section(teammate.client)
    assert acting_account_id(teammate.client) is None


# --- CSRF on every new form ----------------------------------------------------------------


def test_every_team_form_refuses_a_post_without_csrf_token(owner, teammate, on_team) -> None:
    invitation = Invitation.objects.create(
        account=owner.account,
        email="p@example.com",
        expires_at=timezone.now() + dt.timedelta(days=1),
    )
    membership = Membership.objects.get(account=owner.account, user=teammate.user)
    for person in (owner, teammate):
        person.client = _csrf_enforcing(person.user)
    posts = [
        (owner, reverse("team_invite"), {"email": "new@example.com"}),
        (owner, reverse("team_invitation_revoke", args=[invitation.public_id]), {}),
        (owner, reverse("team_member_role", args=[membership.public_id]), {"role": "owner"}),
        (owner, reverse("team_member_remove", args=[membership.public_id]), {}),
        (teammate, reverse("team_leave"), {}),
        (teammate, reverse("account_switch"), {"account": str(owner.account.public_id)}),
    ]

    statuses = [person.client.post(url, data).status_code for person, url, data in posts]

    assert statuses == [403] * len(posts)
    assert Invitation.objects.count() == 1 and Invitation.objects.get().revoked_at is None
    membership.refresh_from_db()
    assert membership.role == Membership.Role.MEMBER
    assert acting_account_id(teammate.client) is None


def _csrf_enforcing(user: User) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user, backend="allauth.account.auth_backends.AuthenticationBackend")
    return client


def test_the_team_page_forms_carry_a_csrf_token(owner, teammate, invite) -> None:
    invite("pending@example.com")
    _act_on(teammate, owner)
    html = owner.client.get(reverse("team")).content.decode()
    forms = re.findall(r"<form\b.*?</form>", html, flags=re.S)
    posting = [f for f in forms if 'method="post"' in f]

    assert len(posting) >= 5  # invite, withdraw, role, remove, sign out
    assert all("csrfmiddlewaretoken" in f for f in posting)
