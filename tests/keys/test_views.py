"""The keys page and its actions, as a signed-in person (and an outsider) uses them."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from keys.models import ApiKey, KeyAuditEvent, ProviderKey
from keys.services import api_key_resolve
from tests.conftest import FakeOpenAI, Person, free_port

from .conftest import OPENAI_KEY

HTMX = {"HX-Request": "true"}
INDEX = reverse("keys:index")


def test_signed_out_visitors_are_sent_to_sign_in(client: Client, db) -> None:  # type: ignore[no-untyped-def]
    response = client.get(INDEX)
    assert response.status_code == 302
    assert reverse("account_login") in response["Location"]


def test_the_page_lists_keys_and_their_history(
    owner: Person, provider_key: ProviderKey, api_key: tuple[ApiKey, str]
) -> None:
    response = owner.client.get(INDEX)
    assert response.status_code == 200
    html = response.content.decode()
    assert provider_key.hint in html
    assert f"bllm_{api_key[0].prefix}…" in html
    assert "prod" in html
    assert "BudgetLLM key created" in html
    assert "Provider key added" in html
    assert owner.user.email in html


def test_each_bllm_key_shows_its_spend_this_month(
    owner: Person, api_key: tuple[ApiKey, str]
) -> None:
    from django.utils import timezone

    from budgets.models import UsageRecord

    row = api_key[0]
    for cost, saved, status in ((1_250_000, 0, "MISS"), (0, 400_000, "HIT")):
        UsageRecord.objects.create(
            account=owner.account,
            api_key=row,
            endpoint="chat.completions",
            model="gpt-4o-mini",
            cost_micros=cost,
            saved_micros=saved,
            cache_status=status,
            http_status=200,
            created_at=timezone.now(),
        )
    html = owner.client.get(INDEX).content.decode()
    assert "Spend this month" in html
    assert "$1.25" in html
    assert "(saved $0.40)" in html


# --- Connecting a provider key ----------------------------------------------------------------


def test_connecting_a_valid_key_without_htmx_redirects_back_with_a_message(
    owner: Person, fake_openai: FakeOpenAI, vault_keys: list[str]
) -> None:
    response = owner.client.post(
        reverse("keys:provider_add"), {"key": OPENAI_KEY, "name": "main"}, follow=True
    )
    assert response.redirect_chain[-1][0] == INDEX
    assert "OpenAI key connected." in response.content.decode()
    assert ProviderKey.objects.get(account=owner.account).name == "main"


def test_connecting_a_valid_key_with_htmx_swaps_in_the_whole_keys_section(
    owner: Person, fake_openai: FakeOpenAI, vault_keys: list[str]
) -> None:
    response = owner.client.post(reverse("keys:provider_add"), {"key": OPENAI_KEY}, headers=HTMX)
    assert response.status_code == 200
    assert response["HX-Retarget"] == "#keys"
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="keys">')
    assert f"sk-…{OPENAI_KEY[-4:]}" in html


def test_a_rejected_key_re_renders_the_form_inline_with_status_200_and_stores_nothing(
    owner: Person, fake_openai: FakeOpenAI, vault_keys: list[str]
) -> None:
    bad = "sk-proj-invalidLEAKCHECK000000000000000000"
    response = owner.client.post(reverse("keys:provider_add"), {"key": bad}, headers=HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<form id="provider-form"')
    assert "OpenAI rejected this key" in html
    assert bad not in html
    assert not ProviderKey.objects.exists()


def test_an_unreachable_provider_shows_a_clear_inline_error(
    owner: Person,
    vault_keys: list[str],
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.OPENAI_UPSTREAM_BASE_URL = f"http://127.0.0.1:{free_port()}/v1"
    response = owner.client.post(reverse("keys:provider_add"), {"key": OPENAI_KEY})
    assert response.status_code == 200
    html = response.content.decode()
    assert "Could not reach OpenAI" in html
    assert OPENAI_KEY not in html
    assert not ProviderKey.objects.exists()


def test_at_the_plan_limit_the_page_says_so_and_a_post_is_refused(
    owner: Person, provider_key: ProviderKey
) -> None:
    html = owner.client.get(INDEX).content.decode()
    assert "Free plan allows 1 provider key." in html
    assert 'id="provider-form"' not in html

    response = owner.client.post(
        reverse("keys:provider_add"), {"key": OPENAI_KEY + "2"}, headers=HTMX
    )
    assert response.status_code == 200
    assert "Free plan allows 1 provider key" in response.content.decode()
    assert ProviderKey.objects.count() == 1


def test_deleting_a_provider_key_asks_first_then_deletes_and_revokes_its_keys(
    owner: Person, provider_key: ProviderKey, api_key: tuple[ApiKey, str]
) -> None:
    url = reverse("keys:provider_delete", args=[provider_key.public_id])
    confirm = owner.client.get(url)
    assert confirm.status_code == 200
    assert "will be revoked" in confirm.content.decode()
    assert f"bllm_{api_key[0].prefix}" in confirm.content.decode()
    partial = owner.client.get(url, headers=HTMX).content.decode()
    assert partial.lstrip().startswith('<div class="confirm" id="confirm-area">')
    assert ProviderKey.objects.exists()

    response = owner.client.post(url, follow=True)
    assert response.status_code == 200
    assert not ProviderKey.objects.exists()
    assert api_key_resolve(raw=api_key[1]) is None
    assert "Provider key deleted" in response.content.decode()


# --- bllm_ keys --------------------------------------------------------------------------------


def test_a_new_bllm_key_is_shown_once_with_a_copy_button_and_not_cached(
    owner: Person, provider_key: ProviderKey
) -> None:
    response = owner.client.post(
        reverse("keys:api_create"),
        {"name": "notebook", "provider_key": str(provider_key.public_id)},
        headers=HTMX,
    )
    assert response.status_code == 200
    row = ApiKey.objects.get(account=owner.account)
    html = response.content.decode()
    raw = response.context["new_key_raw"]
    assert api_key_resolve(raw=raw) is not None
    assert f'value="{raw}"' in html
    assert 'data-copy-target="new-key-value"' in html
    assert "no-store" in response["Cache-Control"]

    again = owner.client.get(INDEX).content.decode()
    assert raw not in again
    assert f"bllm_{row.prefix}…" in again


def test_creating_a_bllm_key_without_htmx_renders_the_reveal_on_the_page(
    owner: Person, provider_key: ProviderKey
) -> None:
    response = owner.client.post(
        reverse("keys:api_create"), {"name": "ci", "provider_key": str(provider_key.public_id)}
    )
    assert response.status_code == 200
    assert "it will not be shown again" in response.content.decode()
    assert 'src="/static/js/keys.js"' in response.content.decode()


def test_an_invalid_bllm_key_form_re_renders_inline_with_status_200(
    owner: Person, provider_key: ProviderKey
) -> None:
    response = owner.client.post(
        reverse("keys:api_create"),
        {"name": "", "provider_key": str(provider_key.public_id)},
        headers=HTMX,
    )
    assert response.status_code == 200
    assert response.content.decode().lstrip().startswith('<form id="api-form"')
    assert "This field is required." in response.content.decode()
    assert not ApiKey.objects.exists()


def test_the_bllm_key_plan_limit_is_a_clear_message(
    owner: Person, provider_key: ProviderKey, api_key: tuple[ApiKey, str]
) -> None:
    html = owner.client.get(INDEX).content.decode()
    assert "Free plan allows 1 active BudgetLLM key." in html
    response = owner.client.post(
        reverse("keys:api_create"),
        {"name": "two", "provider_key": str(provider_key.public_id)},
        headers=HTMX,
    )
    assert "Free plan allows 1 active BudgetLLM key" in response.content.decode()
    assert ApiKey.objects.count() == 1


def test_pause_resume_and_revoke_change_the_key_and_show_in_the_history(
    owner: Person, api_key: tuple[ApiKey, str]
) -> None:
    row, raw = api_key
    owner.client.post(reverse("keys:api_pause", args=[row.public_id]), headers=HTMX)
    resolved = api_key_resolve(raw=raw)
    assert resolved is not None and resolved.key_paused
    owner.client.post(reverse("keys:api_resume", args=[row.public_id]), headers=HTMX)
    resolved = api_key_resolve(raw=raw)
    assert resolved is not None and not resolved.key_paused
    response = owner.client.post(reverse("keys:api_revoke", args=[row.public_id]), follow=True)
    assert api_key_resolve(raw=raw) is None

    html = response.content.decode()
    for label in ("BudgetLLM key paused", "BudgetLLM key resumed", "BudgetLLM key revoked"):
        assert label in html
    assert "revoked " in html  # the status column


# --- Outsiders and CSRF ---------------------------------------------------------------------------


def _owner_objects(provider_key: ProviderKey, api_key: tuple[ApiKey, str]) -> list[str]:
    row = api_key[0]
    return [
        reverse("keys:provider_delete", args=[provider_key.public_id]),
        reverse("keys:api_revoke", args=[row.public_id]),
        reverse("keys:api_pause", args=[row.public_id]),
        reverse("keys:api_resume", args=[row.public_id]),
    ]


@pytest.mark.parametrize("who", ["outsider", "teammate"])
def test_another_accounts_keys_are_404_for_every_page_and_action(
    who: str,
    request: pytest.FixtureRequest,
    provider_key: ProviderKey,
    api_key: tuple[ApiKey, str],
) -> None:
    # A teammate acts on their own personal account here, so they are an outsider too.
    person: Person = request.getfixturevalue(who)
    urls = _owner_objects(provider_key, api_key)
    assert person.client.get(urls[0]).status_code == 404
    assert person.client.get(urls[0], headers=HTMX).status_code == 404
    for url in urls:
        assert person.client.post(url).status_code == 404, url
        assert person.client.post(url, headers=HTMX).status_code == 404, url
    assert ProviderKey.objects.filter(pk=provider_key.pk).exists()
    row = ApiKey.objects.get(pk=api_key[0].pk)
    assert row.revoked_at is None and row.paused_at is None
    assert not KeyAuditEvent.objects.filter(account=person.account).exists()
    assert provider_key.hint not in person.client.get(INDEX).content.decode()


def test_an_outsider_cannot_make_a_bllm_key_on_someone_elses_provider_key(
    outsider: Person, provider_key: ProviderKey
) -> None:
    response = outsider.client.post(
        reverse("keys:api_create"), {"name": "x", "provider_key": str(provider_key.public_id)}
    )
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_every_form_requires_the_csrf_token(
    owner: Person, provider_key: ProviderKey, api_key: tuple[ApiKey, str]
) -> None:
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(owner.user, backend="allauth.account.auth_backends.AuthenticationBackend")
    posts: list[tuple[str, dict[str, str]]] = [
        (reverse("keys:provider_add"), {"key": OPENAI_KEY + "9"}),
        (reverse("keys:api_create"), {"name": "x", "provider_key": str(provider_key.public_id)}),
        *((url, {}) for url in _owner_objects(provider_key, api_key)),
    ]
    for url, data in posts:
        assert strict.post(url, data).status_code == 403, url
        assert strict.post(url, data, headers=HTMX).status_code == 403, url
    assert ProviderKey.objects.filter(pk=provider_key.pk).exists()
    row = ApiKey.objects.get()
    assert row.revoked_at is None and row.paused_at is None

    # The page carries the token for its forms, and with it the same POST works.
    page = strict.get(INDEX)
    token = page.context["csrf_token"]
    assert f'value="{token}"' in page.content.decode() or str(token) in page.content.decode()
    ok = strict.post(
        reverse("keys:api_pause", args=[row.public_id]), {"csrfmiddlewaretoken": str(token)}
    )
    assert ok.status_code == 302
