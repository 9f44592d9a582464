"""Sign up / sign in by magic link: single use, expiry, scanner safety, browser binding."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from accounts.models import Account, Membership, User

from .conftest import last_login_mail, request_login, signed_in_email

pytestmark = pytest.mark.django_db


def test_login_mail_says_what_it_is_and_holds_link_and_code(mailoutbox) -> None:
    response = request_login(Client(), "New.Person@Example.com")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/code/confirm/"
    assert len(mailoutbox) == 1
    msg = last_login_mail(mailoutbox)
    assert msg.to == ["new.person@example.com"]
    assert msg.subject == "Your BudgetLLM sign-in link"
    assert "sign in to BudgetLLM" in msg.body
    assert "expire in 15 minutes" in msg.body
    assert msg.link_path.startswith("/accounts/login/link/")
    assert len(msg.code) >= 6


def test_new_email_creates_user_and_account_in_the_browsers_time_zone(mailoutbox) -> None:
    request_login(Client(), "fresh@example.com", tz="Asia/Kolkata")

    user = User.objects.get(email="fresh@example.com")
    assert not user.has_usable_password()
    account = Membership.objects.get(user=user, role=Membership.Role.OWNER).account
    assert account.timezone == "Asia/Kolkata"


def test_bogus_browser_time_zone_falls_back_to_utc(mailoutbox) -> None:
    request_login(Client(), "fresh@example.com", tz="Mars/Olympus_Mons")

    account = Account.objects.get(memberships__user__email="fresh@example.com")
    assert account.timezone == "UTC"


def test_asking_browser_signs_in_with_one_click(mailoutbox) -> None:
    browser = Client()
    request_login(browser, "alice@example.com")

    response = browser.get(last_login_mail(mailoutbox).link_path)

    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    assert signed_in_email(browser) == "alice@example.com"


def test_magic_link_is_single_use(mailoutbox) -> None:
    browser = Client()
    request_login(browser, "alice@example.com")
    link = last_login_mail(mailoutbox).link_path
    assert browser.get(link).status_code == 302

    other = Client()
    reused_get = other.get(link)
    reused_post = other.post(link)

    assert reused_get.status_code == 410
    assert reused_post.status_code == 410
    assert b"no longer works" in reused_post.content
    assert signed_in_email(other) is None


def test_a_sign_in_by_code_kills_the_link(mailoutbox) -> None:
    browser = Client()
    request_login(browser, "alice@example.com")
    msg = last_login_mail(mailoutbox)
    browser.post("/accounts/login/code/confirm/", {"code": msg.code})
    assert signed_in_email(browser) == "alice@example.com"

    response = Client().post(msg.link_path)

    assert response.status_code == 410


def test_magic_link_expires_after_15_minutes(mailoutbox) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        request_login(Client(), "alice@example.com")
        link = last_login_mail(mailoutbox).link_path

    with time_machine.travel(start + dt.timedelta(minutes=14, seconds=50), tick=False):
        assert Client().get(link).status_code == 200  # still offered

    with time_machine.travel(start + dt.timedelta(minutes=15, seconds=5), tick=False):
        late = Client()
        response = late.post(link)

    assert response.status_code == 410
    assert signed_in_email(late) is None


def test_scanner_get_does_not_consume_and_shows_a_confirm_button(mailoutbox) -> None:
    request_login(Client(), "alice@example.com")
    link = last_login_mail(mailoutbox).link_path

    scanner = Client()
    first = scanner.get(link)
    second = scanner.get(link)

    for response in (first, second):
        assert response.status_code == 200
        assert b'<form method="post">' in response.content
        assert b">Sign in</button>" in response.content
    assert signed_in_email(scanner) is None
    assert User.objects.get(email="alice@example.com").last_login is None

    # The real click afterwards still works.
    person = Client()
    assert person.post(link).status_code == 302
    assert signed_in_email(person) == "alice@example.com"


def test_confirm_post_from_another_browser_signs_in(mailoutbox) -> None:
    request_login(Client(), "alice@example.com")
    link = last_login_mail(mailoutbox).link_path

    phone = Client()
    phone.get(link)
    response = phone.post(link)

    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    assert signed_in_email(phone) == "alice@example.com"


def test_tampered_link_is_refused(mailoutbox) -> None:
    request_login(Client(), "alice@example.com")
    link = last_login_mail(mailoutbox).link_path
    token = link.split("/")[4]
    forged = link.replace(token, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))

    response = Client().post(forged)

    assert response.status_code == 410


def test_code_fallback_signs_in_the_asking_browser(mailoutbox) -> None:
    browser = Client()
    request_login(browser, "alice@example.com")

    response = browser.post(
        "/accounts/login/code/confirm/", {"code": last_login_mail(mailoutbox).code}
    )

    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    assert signed_in_email(browser) == "alice@example.com"


def test_wrong_code_does_not_sign_in(mailoutbox) -> None:
    browser = Client()
    request_login(browser, "alice@example.com")

    response = browser.post("/accounts/login/code/confirm/", {"code": "WRONG1"})

    assert response.status_code == 200
    assert signed_in_email(browser) is None


def test_code_from_another_browser_is_useless(mailoutbox) -> None:
    request_login(Client(), "alice@example.com")

    other = Client()
    response = other.post(
        "/accounts/login/code/confirm/", {"code": last_login_mail(mailoutbox).code}
    )

    assert response.status_code == 302
    assert signed_in_email(other) is None


def test_existing_user_keeps_their_account(mailoutbox, owner) -> None:
    browser = Client()
    request_login(browser, owner.user.email, tz="Asia/Tokyo")
    browser.get(last_login_mail(mailoutbox).link_path)

    assert signed_in_email(browser) == owner.user.email
    assert User.objects.filter(email=owner.user.email).count() == 1
    owner.account.refresh_from_db()
    assert owner.account.timezone == "UTC"  # sign-in never rewrites a chosen zone


def test_signed_in_user_visiting_login_is_sent_on(owner) -> None:
    response = owner.client.get("/accounts/login/")

    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"


def test_signup_is_the_login_form() -> None:
    response = Client().get("/accounts/signup/?next=/keys/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=%2Fkeys%2F"


@pytest.mark.parametrize(
    "path", ["/accounts/password/reset/", "/accounts/password/change/", "/accounts/email/"]
)
def test_there_are_no_password_or_email_pages(owner, path: str) -> None:
    assert owner.client.get(path).status_code == 404
    assert Client().get(path).status_code == 404


def test_logout_needs_a_post(owner) -> None:
    owner.client.get("/accounts/logout/")
    assert signed_in_email(owner.client) == owner.user.email

    response = owner.client.post("/accounts/logout/")

    assert response.status_code == 302
    assert signed_in_email(owner.client) is None


def test_development_console_prints_the_link_unbroken(mailoutbox, settings) -> None:
    # `make run` prints mails to the terminal. The stock console backend prints
    # quoted-printable, which breaks long lines with "=": ours prints the link whole.
    import io

    from accounts.mail import ConsoleBackend

    request_login(Client(), "alice@example.com", next_url="/keys/some/rather/long/path/")
    stream = io.StringIO()

    ConsoleBackend(stream=stream).send_messages([mailoutbox[-1]])

    printed = stream.getvalue()
    assert "Subject: Your BudgetLLM sign-in link" in printed
    assert settings.SITE_URL + last_login_mail(mailoutbox).link_path + "\n" in printed
