"""The vault: authenticated encryption, tamper detection and key rotation."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from keys import vault
from keys.models import ProviderKey
from tests.conftest import Person

from .conftest import OPENAI_KEY


def test_round_trip_returns_the_plain_text(vault_keys: list[str]) -> None:
    token = vault.encrypt(OPENAI_KEY)
    assert OPENAI_KEY not in token
    assert vault.decrypt(token) == OPENAI_KEY


def test_same_plain_text_encrypts_differently_each_time(vault_keys: list[str]) -> None:
    assert vault.encrypt(OPENAI_KEY) != vault.encrypt(OPENAI_KEY)


def test_modified_ciphertext_is_rejected_with_a_clear_error(vault_keys: list[str]) -> None:
    token = vault.encrypt(OPENAI_KEY)
    # Flip one character in the middle of the token (inside the ciphertext/HMAC).
    middle = len(token) // 2
    tampered = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    with pytest.raises(vault.VaultError, match="could not be decrypted"):
        vault.decrypt(tampered)


@pytest.mark.parametrize("garbage", ["", "not-a-token", "gAAAA", "☃"])
def test_garbage_is_a_vault_error_not_a_crash(vault_keys: list[str], garbage: str) -> None:
    with pytest.raises(vault.VaultError):
        vault.decrypt(garbage)


def test_a_key_removed_from_the_vault_can_no_longer_decrypt(settings, vault_keys) -> None:  # type: ignore[no-untyped-def]
    token = vault.encrypt(OPENAI_KEY)
    settings.VAULT_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(vault.VaultError, match="no longer in VAULT_KEYS"):
        vault.decrypt(token)


def test_an_invalid_vault_key_setting_names_the_entry_but_not_its_value(settings) -> None:  # type: ignore[no-untyped-def]
    settings.VAULT_KEYS = [Fernet.generate_key().decode(), "short-and-wrong"]
    with pytest.raises(ImproperlyConfigured) as info:
        vault.encrypt("x")
    assert "entry 2" in str(info.value)
    assert "short-and-wrong" not in str(info.value)


def test_old_ciphertexts_work_until_rotated_then_decrypt_with_the_new_key_alone(
    settings,  # type: ignore[no-untyped-def]
    owner: Person,
    stored_provider_key: Callable[..., ProviderKey],
    vault_keys: list[str],
) -> None:
    old_key = vault_keys[0]
    row = stored_provider_key(owner.account)
    old_token = row.ciphertext

    new_key = Fernet.generate_key().decode()
    settings.VAULT_KEYS = [new_key, old_key]
    # Not rotated yet: the old ciphertext still opens (old key is still listed)...
    assert vault.decrypt(old_token) == OPENAI_KEY
    # ...but would not with the new key alone.
    settings.VAULT_KEYS = [new_key]
    with pytest.raises(vault.VaultError):
        vault.decrypt(old_token)

    settings.VAULT_KEYS = [new_key, old_key]
    call_command("rotate_vault_keys", stdout=io.StringIO())
    row.refresh_from_db()
    assert row.ciphertext != old_token

    settings.VAULT_KEYS = [new_key]
    assert vault.decrypt(row.ciphertext) == OPENAI_KEY
    # The rotated token is under the new key: the old key alone cannot open it.
    settings.VAULT_KEYS = [old_key]
    with pytest.raises(vault.VaultError):
        vault.decrypt(row.ciphertext)


def test_rotation_reports_keys_it_cannot_open_and_still_rotates_the_rest(
    settings,  # type: ignore[no-untyped-def]
    owner: Person,
    outsider: Person,
    stored_provider_key: Callable[..., ProviderKey],
) -> None:
    good = stored_provider_key(owner.account)
    bad = stored_provider_key(outsider.account)
    ProviderKey.objects.filter(pk=bad.pk).update(ciphertext=bad.ciphertext[:-6] + "AAAAAA")
    settings.VAULT_KEYS = [Fernet.generate_key().decode(), *settings.VAULT_KEYS]

    with pytest.raises(CommandError, match="1 provider key"):
        call_command("rotate_vault_keys", stdout=io.StringIO())

    good_before = good.ciphertext
    good.refresh_from_db()
    assert good.ciphertext != good_before
    settings.VAULT_KEYS = settings.VAULT_KEYS[:1]
    assert vault.decrypt(good.ciphertext) == OPENAI_KEY
