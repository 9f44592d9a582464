"""Account settings (time zone) and deleting an account with everything it owns."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import Account, Membership, User
from budgets.models import Cap, DailyUsage, UsageRecord
from keys.models import ApiKey, KeyAuditEvent, ProviderKey

from .conftest import signed_in_email

pytestmark = pytest.mark.django_db


def test_settings_page_needs_sign_in() -> None:
    response = Client().get("/account/settings/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/account/settings/"


def test_settings_page_shows_own_time_zone(owner, outsider) -> None:
    Account.objects.filter(pk=outsider.account.pk).update(timezone="Pacific/Auckland")
    Account.objects.filter(pk=owner.account.pk).update(timezone="Europe/Berlin")

    response = owner.client.get("/account/settings/")

    assert response.status_code == 200
    assert b'value="Europe/Berlin"' in response.content
    assert b'name="timezone" value="Pacific/Auckland"' not in response.content


def test_time_zone_can_be_changed(owner, outsider) -> None:
    response = owner.client.post("/account/settings/", {"timezone": "Asia/Kolkata"})

    assert response.status_code == 302
    owner.account.refresh_from_db()
    outsider.account.refresh_from_db()
    assert owner.account.timezone == "Asia/Kolkata"
    assert outsider.account.timezone == "UTC"


@pytest.mark.parametrize("bad", ["Mars/Base", "", "../../etc/passwd", "posixrules", "x" * 80])
def test_invalid_time_zone_is_an_inline_error(owner, bad: str) -> None:
    response = owner.client.post("/account/settings/", {"timezone": bad})

    assert response.status_code == 200
    assert b'class="error"' in response.content
    owner.account.refresh_from_db()
    assert owner.account.timezone == "UTC"


def test_htmx_gets_only_the_form_partial(owner) -> None:
    response = owner.client.post(
        "/account/settings/", {"timezone": "Nowhere/Land"}, headers={"HX-Request": "true"}
    )

    assert response.status_code == 200
    assert response.content.lstrip().startswith(b'<form id="timezone-form"')
    assert b"is not a time zone we know" in response.content


# What _fill creates: a provider key, a bllm_ key, two caps, a usage record, a rollup
# and an audit event.
ROWS_PER_ACCOUNT = 7


def test_htmx_success_reloads_the_page(owner) -> None:
    response = owner.client.post(
        "/account/settings/", {"timezone": "Asia/Tokyo"}, headers={"HX-Request": "true"}
    )

    assert response.status_code == 200
    assert response["HX-Redirect"] == "/account/settings/"
    owner.account.refresh_from_db()
    assert owner.account.timezone == "Asia/Tokyo"


def _fill(account: Account) -> None:
    pk = ProviderKey.objects.create(account=account, ciphertext="x", hint="sk-…abcd")
    key = ApiKey.objects.create(
        account=account, provider_key=pk, name="prod", prefix=f"bllm_{account.pk}", digest="0"
    )
    Cap.objects.create(account=account, scope="account", period="month", limit_micros=5_000_000)
    Cap.objects.create(
        account=account, scope="key", api_key=key, period="day", limit_micros=1_000_000
    )
    UsageRecord.objects.create(
        account=account,
        api_key=key,
        endpoint="chat.completions",
        model="gpt-4o-mini",
        cost_micros=12,
        cache_status="MISS",
        http_status=200,
    )
    DailyUsage.objects.create(
        account=account, api_key_id_or_zero=key.pk, model="gpt-4o-mini", day="2026-11-01"
    )
    KeyAuditEvent.objects.create(account=account, action="api_key.created", subject="prod")


def _owned_rows(account_id: int) -> int:
    return sum(
        model.objects.filter(account_id=account_id).count()
        for model in (ProviderKey, ApiKey, Cap, UsageRecord, DailyUsage, KeyAuditEvent)
    )


def test_delete_page_asks_for_confirmation(owner) -> None:
    response = owner.client.get("/account/delete/")

    assert response.status_code == 200
    assert b"Type your email address to confirm" in response.content


def test_delete_with_wrong_confirmation_deletes_nothing(owner) -> None:
    _fill(owner.account)

    response = owner.client.post("/account/delete/", {"confirm_email": "someone@else.com"})

    assert response.status_code == 200
    assert b"That is not your email address" in response.content
    assert User.objects.filter(pk=owner.user.pk).exists()
    assert _owned_rows(owner.account.pk) == ROWS_PER_ACCOUNT


def test_delete_removes_the_account_and_everything_it_owns(owner, outsider, teammate) -> None:
    _fill(owner.account)
    _fill(outsider.account)
    owner_account_id = owner.account.pk

    response = owner.client.post("/account/delete/", {"confirm_email": "OWNER@example.com "})

    assert response.status_code == 302
    assert response["Location"] == "/"
    assert signed_in_email(owner.client) is None
    assert not User.objects.filter(pk=owner.user.pk).exists()
    assert not Account.objects.filter(pk=owner_account_id).exists()
    assert _owned_rows(owner_account_id) == 0
    assert not Membership.objects.filter(account_id=owner_account_id).exists()
    # Nobody else loses anything (the teammate keeps their own account and user).
    assert _owned_rows(outsider.account.pk) == ROWS_PER_ACCOUNT
    assert User.objects.filter(pk=teammate.user.pk).exists()
    assert Account.objects.filter(pk=teammate.account.pk).exists()


def test_a_member_deleting_themselves_leaves_the_team_account(owner, teammate) -> None:
    _fill(owner.account)

    teammate.client.post("/account/delete/", {"confirm_email": teammate.user.email})

    assert not User.objects.filter(pk=teammate.user.pk).exists()
    assert Account.objects.filter(pk=owner.account.pk).exists()
    assert _owned_rows(owner.account.pk) == ROWS_PER_ACCOUNT


def test_delete_needs_sign_in(owner) -> None:
    response = Client().post("/account/delete/", {"confirm_email": owner.user.email})

    assert response.status_code == 302
    assert User.objects.filter(pk=owner.user.pk).exists()
