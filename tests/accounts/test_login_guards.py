"""Login mails: rate limits, no account enumeration, ?next= stays on the site."""

from __future__ import annotations

import pytest
from django.test import Client

from .conftest import last_login_mail, request_login, signed_in_email

pytestmark = pytest.mark.django_db

LIMITED = b"Too many sign-in emails were requested"


def test_login_mails_are_rate_limited_per_email(mailoutbox, settings) -> None:
    # Different IPs: only the per-address limit (5 per 15 minutes) can bite.
    for i in range(5):
        assert request_login(Client(), "Alice@Example.com", ip=f"10.0.0.{i}").status_code == 302

    # The same address in another spelling counts against the same limit.
    response = request_login(Client(), " alice@EXAMPLE.com ", ip="10.0.1.1")

    assert response.status_code == 429
    assert LIMITED in response.content
    assert len(mailoutbox) == 5
    # Another address is not affected.
    assert request_login(Client(), "bob@example.com", ip="10.0.1.1").status_code == 302


def test_login_mails_are_rate_limited_per_ip(mailoutbox, settings) -> None:
    settings.ACCOUNT_RATE_LIMITS = {
        **settings.ACCOUNT_RATE_LIMITS,
        "request_login_code": "3/h/ip,5/15m/key",
    }
    for i in range(3):
        assert request_login(Client(), f"user{i}@example.com", ip="192.0.2.7").status_code == 302

    response = request_login(Client(), "user9@example.com", ip="192.0.2.7")

    assert response.status_code == 429
    assert LIMITED in response.content
    assert len(mailoutbox) == 3
    assert request_login(Client(), "user9@example.com", ip="192.0.2.8").status_code == 302


def _scrub(content: bytes, email: str) -> bytes:
    import re

    # CSRF token and CSP nonce differ per response; the email is the one the person typed.
    content = re.sub(rb'nonce="[^"]+"', b"", content)
    content = re.sub(rb'name="csrfmiddlewaretoken" value="[^"]+"', b"", content)
    content = re.sub(rb'"X-CSRFToken": "[^"]+"', b"", content)
    return content.replace(email.encode(), b"EMAIL")


def test_responses_do_not_reveal_whether_an_account_exists(mailoutbox, owner) -> None:
    known, unknown = Client(), Client()
    r_known = request_login(known, owner.user.email)
    r_unknown = request_login(unknown, "nobody@example.com")

    assert r_known.status_code == r_unknown.status_code == 302
    assert r_known["Location"] == r_unknown["Location"]

    page_known = known.get(r_known["Location"])
    page_unknown = unknown.get(r_unknown["Location"])
    assert page_known.status_code == page_unknown.status_code == 200
    assert _scrub(page_known.content, owner.user.email) == _scrub(
        page_unknown.content, "nobody@example.com"
    )
    # Both received the same kind of mail.
    assert [m.subject for m in mailoutbox] == ["Your BudgetLLM sign-in link"] * 2


def test_rate_limit_answer_is_the_same_for_known_and_unknown(mailoutbox, owner) -> None:
    for _ in range(5):
        request_login(Client(), owner.user.email, ip="10.9.0.1")
        request_login(Client(), "nobody@example.com", ip="10.9.0.2")

    r_known = request_login(Client(), owner.user.email, ip="10.9.0.1")
    r_unknown = request_login(Client(), "nobody@example.com", ip="10.9.0.2")

    assert r_known.status_code == r_unknown.status_code == 429
    assert _scrub(r_known.content, owner.user.email) == _scrub(
        r_unknown.content, "nobody@example.com"
    )


def test_invalid_email_rerenders_the_form_with_an_error() -> None:
    response = Client().post("/accounts/login/", {"email": "not-an-email"})

    assert response.status_code == 200
    assert b"Enter a valid email address." in response.content


@pytest.mark.parametrize(
    "evil", ["https://evil.example/", "//evil.example/x", "javascript:alert(1)"]
)
def test_external_next_is_ignored_everywhere(mailoutbox, evil: str) -> None:
    browser = Client()
    response = request_login(browser, "alice@example.com", next_url=evil)
    assert response["Location"] == "/accounts/login/code/confirm/"
    link = last_login_mail(mailoutbox).link_path
    assert "evil" not in link

    # Even when an attacker appends it to a genuine link by hand.
    from urllib.parse import quote

    crafted = link.split("?")[0] + "?next=" + quote(evil)
    response = browser.get(crafted)

    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    assert signed_in_email(browser) == "alice@example.com"


def test_external_next_is_ignored_by_the_code_confirmation(mailoutbox) -> None:
    browser = Client()
    request_login(browser, "alice@example.com")

    response = browser.post(
        "/accounts/login/code/confirm/?next=https://evil.example/",
        {"code": last_login_mail(mailoutbox).code, "next": "https://evil.example/"},
    )

    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"


def test_internal_next_is_followed_by_link_and_code(mailoutbox) -> None:
    browser = Client()
    response = request_login(browser, "alice@example.com", next_url="/keys/")
    assert response["Location"] == "/accounts/login/code/confirm/?next=%2Fkeys%2F"
    link = last_login_mail(mailoutbox).link_path
    assert "next=%2Fkeys%2F" in link

    assert browser.get(link)["Location"] == "/keys/"

    other = Client()
    request_login(other, "bob@example.com", next_url="/keys/")
    response = other.post(
        "/accounts/login/code/confirm/?next=/keys/",
        {"code": last_login_mail(mailoutbox).code, "next": "/keys/"},
    )
    assert response["Location"] == "/keys/"


def test_login_page_keeps_next_in_the_form() -> None:
    response = Client().get("/accounts/login/?next=/keys/")

    assert response.status_code == 200
    assert b'name="next" value="/keys/"' in response.content


def test_login_page_drops_an_external_next() -> None:
    response = Client().get("/accounts/login/?next=https://evil.example/")

    assert b"evil.example" not in response.content
