"""Walk the signed-in site by its own links: nothing a user can click is broken, and every
object URL the owner's pages link to is a 404 for someone from another account."""

from __future__ import annotations

import re

from django.test import Client
from django.utils import timezone

from budgets.models import AlertChannel, Cap
from tests.conftest import Person
from tests.dashboard.conftest import make_key, record

LINK = re.compile(r'(?:href|action|hx-get|hx-post)="(/[^"#?]*)')
UUID_IN_PATH = re.compile(r"/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/")
START = [
    "/dashboard/",
    "/welcome/",
    "/keys/",
    "/caps/",
    "/alerts/",
    "/billing/",
    "/billing/keys/",
    "/account/settings/",
]
SKIP = ("/static/", "/accounts/logout/", "/v1/", "/account/delete/")


def crawl(client: Client, *, secret: str = "") -> tuple[set[str], list[tuple[str, int]]]:
    """GET every same-site link reachable from START; return what was seen and what broke
    (a page showing `secret` counts as broken)."""
    seen: set[str] = set()
    broken: list[tuple[str, int]] = []
    todo = list(START)
    while todo and len(seen) < 200:
        url = todo.pop()
        if url in seen or url.startswith(SKIP):
            continue
        seen.add(url)
        response = client.get(url)
        # 405: a POST-only action (its form was found on a page); that is not a broken link.
        if response.status_code >= 400 and response.status_code != 405:
            broken.append((url, response.status_code))
        if secret and secret.encode() in response.content:
            broken.append((url, -1))
        if response.status_code == 200 and "html" in response.get("Content-Type", ""):
            todo.extend(LINK.findall(response.content.decode()))
    return seen, broken


def test_a_new_user_finds_no_broken_page_or_link(owner: Person) -> None:
    seen, broken = crawl(owner.client)

    assert broken == []
    assert {"/keys/", "/caps/", "/alerts/", "/billing/"} <= seen


def test_every_object_url_of_the_owner_is_a_404_for_an_outsider(
    owner: Person, outsider: Person
) -> None:
    key = make_key(owner.account)
    record(owner.account, key, timezone.now())
    Cap.objects.create(account=owner.account, scope="account", period="month", limit_micros=10**6)
    Cap.objects.create(
        account=owner.account, scope="key", api_key=key, period="day", limit_micros=10**6
    )
    AlertChannel.objects.create(
        account=owner.account,
        kind="slack",
        target="https://hooks.slack.com/services/T000/B000/WALKSECRETxyz",
    )

    seen, broken = crawl(owner.client, secret="WALKSECRET")
    object_urls = sorted(u for u in seen if UUID_IN_PATH.search(u))

    assert broken == []  # and the webhook URL's secret part is on no page
    # Keys (pause, revoke, delete), caps, channels and the breaker all have object URLs.
    assert len(object_urls) >= 8
    for url in object_urls:
        assert outsider.client.get(url).status_code in (404, 405), url
        assert outsider.client.post(url).status_code == 404, url
