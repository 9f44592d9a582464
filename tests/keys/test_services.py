"""Key workflows: checking provider keys, creating and resolving bllm_ keys, the audit trail."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.utils import timezone

from keys import vault
from keys.models import ApiKey, KeyAuditEvent, ProviderKey
from keys.services import (
    API_KEY_LEN,
    PlanLimitReached,
    ProviderKeyInvalid,
    ProviderKeyUnusable,
    ProviderUnreachable,
    api_key_create,
    api_key_digest,
    api_key_mark_used,
    api_key_resolve,
    api_key_revoke,
    api_key_set_paused,
    provider_key_add,
    provider_key_delete,
)
from tests.conftest import FakeOpenAI, Person, free_port

from .conftest import OPENAI_KEY

# --- Provider keys ------------------------------------------------------------------------


def test_a_valid_provider_key_is_checked_with_openai_and_stored_encrypted(
    owner: Person, fake_openai: FakeOpenAI, vault_keys: list[str]
) -> None:
    row = provider_key_add(account=owner.account, actor=owner.user, raw_key=f"  {OPENAI_KEY}\n")

    assert fake_openai.stats().get("/v1/models") == 1
    assert row.hint == "sk-…" + OPENAI_KEY[-4:]
    assert OPENAI_KEY not in row.ciphertext
    assert vault.decrypt(row.ciphertext) == OPENAI_KEY
    event = KeyAuditEvent.objects.get(account=owner.account)
    assert event.action == KeyAuditEvent.Action.PROVIDER_KEY_ADDED
    assert event.actor == owner.user
    assert event.subject == f"OpenAI sk-…{OPENAI_KEY[-4:]}"


def test_a_key_openai_rejects_is_a_clear_error_and_nothing_is_stored(
    owner: Person, fake_openai: FakeOpenAI, vault_keys: list[str]
) -> None:
    bad = "sk-proj-invalid0000000000000000000000000000"
    with pytest.raises(ProviderKeyInvalid, match="OpenAI rejected this key") as info:
        provider_key_add(account=owner.account, actor=owner.user, raw_key=bad)

    assert bad not in info.value.message
    assert fake_openai.stats().get("/v1/models") == 1
    assert not ProviderKey.objects.exists()
    assert not KeyAuditEvent.objects.exists()


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("", "Paste your OpenAI API key"),
        ("pk-1234567890abcdefghijklmnop", "they start with sk-"),
        ("sk-short", "does not look like an OpenAI API key"),
        ("sk-proj-abc def ghi jkl mno pqr stu", "no spaces"),
    ],
)
def test_something_that_is_not_an_openai_key_is_refused_without_calling_openai(
    owner: Person, fake_openai: FakeOpenAI, vault_keys: list[str], raw: str, words: str
) -> None:
    with pytest.raises(ProviderKeyInvalid, match=words):
        provider_key_add(account=owner.account, actor=owner.user, raw_key=raw)
    assert fake_openai.stats().get("/v1/models") is None
    assert not ProviderKey.objects.exists()


def test_an_unreachable_provider_is_a_clear_error_and_nothing_is_stored(
    settings,  # type: ignore[no-untyped-def]
    owner: Person,
    vault_keys: list[str],
) -> None:
    # Nothing listens on a port we just freed.
    settings.OPENAI_UPSTREAM_BASE_URL = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ProviderUnreachable, match="Could not reach OpenAI"):
        provider_key_add(account=owner.account, actor=owner.user, raw_key=OPENAI_KEY)
    assert not ProviderKey.objects.exists()


def test_a_provider_error_answer_is_reported_as_unreachable_not_as_a_bad_key(
    owner: Person,
    fake_openai: FakeOpenAI,
    vault_keys: list[str],
    settings,  # type: ignore[no-untyped-def]
) -> None:
    # The fake answers /v1/models/<anything> with 404 (not OpenAI's models list).
    settings.OPENAI_UPSTREAM_BASE_URL = fake_openai.base_url + "/nowhere"
    with pytest.raises(ProviderUnreachable, match="OpenAI answered 404"):
        provider_key_add(account=owner.account, actor=owner.user, raw_key=OPENAI_KEY)
    assert not ProviderKey.objects.exists()


def test_the_plan_limit_on_provider_keys_is_enforced_before_calling_openai(
    owner: Person, provider_key: ProviderKey, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset()
    with pytest.raises(PlanLimitReached, match="Free plan allows 1 provider key"):
        provider_key_add(account=owner.account, actor=owner.user, raw_key=OPENAI_KEY + "x")
    assert fake_openai.stats().get("/v1/models") is None
    assert ProviderKey.objects.filter(account=owner.account).count() == 1


def test_deleting_a_provider_key_revokes_its_bllm_keys_and_is_audited(
    owner: Person, provider_key: ProviderKey, api_key: tuple[ApiKey, str]
) -> None:
    row, raw = api_key
    assert provider_key_delete(provider_key=provider_key, actor=owner.user) == 1

    assert not ProviderKey.objects.exists()
    row.refresh_from_db()
    assert row.revoked_at is not None
    assert api_key_resolve(raw=raw) is None
    actions = list(
        KeyAuditEvent.objects.filter(account=owner.account)
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == [
        KeyAuditEvent.Action.PROVIDER_KEY_ADDED,
        KeyAuditEvent.Action.API_KEY_CREATED,
        KeyAuditEvent.Action.API_KEY_REVOKED,
        KeyAuditEvent.Action.PROVIDER_KEY_DELETED,
    ]


# --- bllm_ keys ----------------------------------------------------------------------------


def test_a_new_bllm_key_is_returned_once_and_stored_only_as_prefix_and_hmac(
    owner: Person,
    provider_key: ProviderKey,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    row, raw = api_key_create(
        account=owner.account, actor=owner.user, provider_key=provider_key, name=" ci "
    )
    assert raw.startswith("bllm_" + row.prefix)
    assert len(raw) == API_KEY_LEN
    assert row.name == "ci"
    assert row.digest == api_key_digest(raw)
    assert raw not in row.digest and raw[len("bllm_" + row.prefix) :] not in row.digest
    # The digest depends on the dedicated secret, not just the key.
    settings.KEY_HASH_SECRET = "another-secret"
    assert api_key_digest(raw) != row.digest
    event = KeyAuditEvent.objects.get(action=KeyAuditEvent.Action.API_KEY_CREATED)
    assert event.subject == f"ci (bllm_{row.prefix}…)"
    assert event.actor == owner.user


def test_the_plan_limit_on_bllm_keys_counts_only_active_keys(
    owner: Person, provider_key: ProviderKey, api_key: tuple[ApiKey, str]
) -> None:
    with pytest.raises(PlanLimitReached, match="Free plan allows 1 active BudgetLLM key"):
        api_key_create(
            account=owner.account, actor=owner.user, provider_key=provider_key, name="second"
        )
    api_key_revoke(api_key=api_key[0], actor=owner.user)
    row, _ = api_key_create(
        account=owner.account, actor=owner.user, provider_key=provider_key, name="second"
    )
    assert row.name == "second"


def test_a_bllm_key_needs_a_name(owner: Person, provider_key: ProviderKey) -> None:
    with pytest.raises(Exception, match="Give the key a name"):
        api_key_create(account=owner.account, actor=owner.user, provider_key=provider_key, name=" ")


def test_a_bllm_key_cannot_be_made_for_another_accounts_provider_key(
    outsider: Person, provider_key: ProviderKey
) -> None:
    with pytest.raises(ProviderKeyUnusable):
        api_key_create(
            account=outsider.account, actor=outsider.user, provider_key=provider_key, name="x"
        )
    assert not ApiKey.objects.exists()


# --- Resolution ------------------------------------------------------------------------------


def test_a_valid_key_resolves_to_its_account_and_provider_key_in_one_query(
    owner: Person,
    provider_key: ProviderKey,
    api_key: tuple[ApiKey, str],
    django_assert_num_queries,  # type: ignore[no-untyped-def]
) -> None:
    row, raw = api_key
    with django_assert_num_queries(1):
        resolved = api_key_resolve(raw=raw)
    assert resolved is not None
    assert resolved.api_key_id == row.id
    assert resolved.api_key_public_id == row.public_id
    assert resolved.api_key_name == "prod"
    assert resolved.account_id == owner.account.id
    assert resolved.account_timezone == owner.account.timezone
    assert resolved.account_paused is False
    assert resolved.key_paused is False
    assert resolved.provider == "openai"
    assert resolved.provider_key_id == provider_key.id
    assert resolved.provider_key_ciphertext is not None
    assert vault.decrypt(resolved.provider_key_ciphertext) == OPENAI_KEY
    assert resolved.cache_ttl_seconds == row.cache_ttl_seconds


def _flip_last(raw: str) -> str:
    return raw[:-1] + ("a" if raw[-1] != "a" else "b")


def test_a_wrong_secret_with_a_real_prefix_does_not_resolve(api_key: tuple[ApiKey, str]) -> None:
    assert api_key_resolve(raw=_flip_last(api_key[1])) is None


def test_an_unknown_prefix_does_not_resolve(
    api_key: tuple[ApiKey, str],
    django_assert_num_queries,  # type: ignore[no-untyped-def]
) -> None:
    raw = api_key[1]
    unknown = "bllm_" + "Z" * 12 + raw[len("bllm_") + 12 :]
    with django_assert_num_queries(1):
        assert api_key_resolve(raw=unknown) is None


@pytest.mark.parametrize(
    "transform",
    [
        lambda raw: "",
        lambda raw: raw[:-1],  # too short
        lambda raw: raw + "x",  # too long
        lambda raw: "sk-" + raw[5:] + "xx",  # wrong scheme
        lambda raw: raw[:20] + "-" + raw[21:],  # outside the alphabet
        lambda raw: raw[:20] + "é" + raw[21:],
        lambda raw: raw.upper(),
        lambda raw: f"Bearer {raw}",
    ],
)
def test_malformed_keys_are_refused_without_a_query(
    api_key: tuple[ApiKey, str],
    transform: Callable[[str], str],
    django_assert_num_queries,  # type: ignore[no-untyped-def]
) -> None:
    bad = transform(api_key[1])
    with django_assert_num_queries(0):
        assert api_key_resolve(raw=bad) is None


def test_a_revoked_key_does_not_resolve(owner: Person, api_key: tuple[ApiKey, str]) -> None:
    row, raw = api_key
    api_key_revoke(api_key=row, actor=owner.user)
    assert api_key_resolve(raw=raw) is None


def test_a_disabled_key_does_not_resolve(api_key: tuple[ApiKey, str]) -> None:
    row, raw = api_key
    ApiKey.objects.filter(pk=row.pk).update(disabled_at=timezone.now())
    assert api_key_resolve(raw=raw) is None


def test_a_key_on_a_disabled_provider_key_resolves_without_a_provider_ciphertext(
    provider_key: ProviderKey, api_key: tuple[ApiKey, str]
) -> None:
    ProviderKey.objects.filter(pk=provider_key.pk).update(disabled_at=timezone.now())
    resolved = api_key_resolve(raw=api_key[1])
    assert resolved is not None
    assert resolved.provider_key_id is None
    assert resolved.provider_key_ciphertext is None


def test_paused_key_and_paused_account_resolve_with_their_flags_set(
    owner: Person, api_key: tuple[ApiKey, str]
) -> None:
    row, raw = api_key
    api_key_set_paused(api_key=row, actor=owner.user, paused=True)
    owner.account.paused_at = timezone.now()
    owner.account.save(update_fields=["paused_at"])
    resolved = api_key_resolve(raw=raw)
    assert resolved is not None
    assert resolved.key_paused is True
    assert resolved.account_paused is True


def test_a_key_resolves_only_under_the_hash_secret_it_was_made_with(
    api_key: tuple[ApiKey, str],
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.KEY_HASH_SECRET = "rotated-secret"
    assert api_key_resolve(raw=api_key[1]) is None


# --- Revoke, pause, audit ------------------------------------------------------------------------


def test_revoking_twice_records_one_event(owner: Person, api_key: tuple[ApiKey, str]) -> None:
    row, _ = api_key
    api_key_revoke(api_key=row, actor=owner.user)
    api_key_revoke(api_key=row, actor=owner.user)
    assert KeyAuditEvent.objects.filter(action=KeyAuditEvent.Action.API_KEY_REVOKED).count() == 1


def test_pause_and_resume_are_audited_once_each_with_who_and_when(
    owner: Person, api_key: tuple[ApiKey, str]
) -> None:
    row, _ = api_key
    when = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    with time_machine.travel(when, tick=False):
        api_key_set_paused(api_key=row, actor=owner.user, paused=True)
        api_key_set_paused(api_key=row, actor=owner.user, paused=True)
    row.refresh_from_db()
    assert row.paused_at == when
    api_key_set_paused(api_key=row, actor=None, paused=False)
    api_key_set_paused(api_key=row, actor=None, paused=False)
    row.refresh_from_db()
    assert row.paused_at is None

    paused = KeyAuditEvent.objects.get(action=KeyAuditEvent.Action.API_KEY_PAUSED)
    assert (paused.actor, paused.created_at) == (owner.user, when)
    resumed = KeyAuditEvent.objects.get(action=KeyAuditEvent.Action.API_KEY_RESUMED)
    assert resumed.actor is None  # the system (e.g. the spend breaker) or a deleted user


def test_last_used_is_recorded_at_most_once_a_minute(api_key: tuple[ApiKey, str]) -> None:
    row, _ = api_key
    start = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    api_key_mark_used(api_key_id=row.id, at=start)
    api_key_mark_used(api_key_id=row.id, at=start + timedelta(seconds=30))
    row.refresh_from_db()
    assert row.last_used_at == start
    api_key_mark_used(api_key_id=row.id, at=start + timedelta(seconds=61))
    row.refresh_from_db()
    assert row.last_used_at == start + timedelta(seconds=61)
