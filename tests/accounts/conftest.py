"""Fixtures for the sign-in flow: a clean rate-limit cache and helpers to read mails."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from django.core import mail
from django.core.cache import cache
from django.test import Client

LINK_RE = re.compile(r"https?://\S+/accounts/login/link/\S+")
CODE_RE = re.compile(r"code on the sign-in page: (\S+)")


@pytest.fixture(autouse=True)
def _clean_rate_limits(db) -> Iterator[None]:  # type: ignore[no-untyped-def]
    # allauth keeps rate-limit counters in the cache; with Redis they outlive a test.
    cache.clear()
    yield
    cache.clear()


@dataclass
class LoginMail:
    subject: str
    body: str
    to: list[str]

    @property
    def link_path(self) -> str:
        """The magic link as a path + query the test client can fetch."""
        match = LINK_RE.search(self.body)
        assert match, self.body
        parts = urlsplit(match.group(0))
        return parts.path + (f"?{parts.query}" if parts.query else "")

    @property
    def code(self) -> str:
        match = CODE_RE.search(self.body)
        assert match, self.body
        return match.group(1)


def last_login_mail(outbox: list[mail.EmailMessage]) -> LoginMail:
    assert outbox, "no mail was sent"
    msg = outbox[-1]
    return LoginMail(subject=msg.subject, body=str(msg.body), to=list(msg.to))


def request_login(
    client: Client, email: str, *, next_url: str = "", tz: str = "", ip: str = "127.0.0.1"
) -> object:
    data = {"email": email, "timezone": tz}
    if next_url:
        data["next"] = next_url
    return client.post("/accounts/login/", data, REMOTE_ADDR=ip)


def signed_in_email(client: Client) -> str | None:
    from django.contrib.auth import SESSION_KEY

    from accounts.models import User

    user_id = client.session.get(SESSION_KEY)
    if user_id is None:
        return None
    return User.objects.get(pk=user_id).email
