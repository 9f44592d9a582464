"""A team as people walk it: the owner upgrades to Team and invites a developer, who
signs in from the invitation mail in their own browser, lands on the team, and switches
between the team and their own account from the nav."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import ARTIFACTS, LiveProduct, _shots, shot
from tests.browser.test_billing_flows import sign_up

pytestmark = pytest.mark.browser


@pytest.fixture
def second_page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Another person's browser (its own cookies), with its own screenshots."""
    folder = ARTIFACTS / f"{request.node.name}-invitee"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    pg = context.new_page()
    _shots[id(pg)] = [folder, 0]
    try:
        yield pg
    finally:
        _shots.pop(id(pg), None)
        context.close()


def test_owner_invites_a_developer_who_joins_and_switches_accounts(
    product: LiveProduct, page: Any, second_page: Any
) -> None:
    owner, dev = "cto@team.example", "dev@team.example"
    sign_up(page, product, owner)

    # Without Team: the page says what Team adds and links to billing.
    page.goto(product.url("/account/team/"))
    assert page.is_visible("[data-testid=team-upsell]")
    shot(page, "team page on free")
    page.click("[data-testid=team-upgrade]")
    page.click("[data-testid=razorpay-team]")
    page.locator("[data-testid=standin-razorpay]").wait_for()
    page.click("[data-testid=standin-pay]")
    page.wait_for_selector("text=Welcome to Team")

    page.goto(product.url("/account/team/"))
    page.fill("#invite input[name=email]", dev)
    page.click("#invite button[type=submit]")
    page.wait_for_selector(f"[data-testid=team-flash]:has-text('Invitation sent to {dev}')")
    assert page.locator("[data-testid=invitation-row]", has_text=dev).count() == 1
    shot(page, "invitation sent")

    # The developer opens the mail's link in their own browser: one click signs in.
    second_page.goto(product.wait_for_link(to=dev))
    shot(second_page, "confirm sign in")
    second_page.click("main button[type=submit].primary")
    second_page.wait_for_url("**/account/team/")
    assert second_page.is_visible("text=You joined")
    members = second_page.locator("#members")
    assert members.locator("text=" + owner).count() == 1
    assert not second_page.is_visible("#invite")  # members do not invite
    shot(second_page, "joined the team")

    # The switcher lists both accounts; switch to their own and back.
    switcher = second_page.locator("[data-testid=account-switcher]")
    assert switcher.locator("option").count() == 2
    switcher.locator("select").select_option(label=dev)
    switcher.locator("button[type=submit]").click()
    second_page.wait_for_selector(f"text=You are now acting on {dev}")
    assert second_page.locator("#members").locator("text=" + owner).count() == 0
    shot(second_page, "own account")

    # The owner sees the new member.
    page.goto(product.url("/account/team/"))
    assert page.locator("[data-testid=member-row]", has_text=dev).count() == 1
    shot(page, "owner sees the member")
