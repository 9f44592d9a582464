"""Fixtures for the key vault tests: provider keys and bllm_ keys for the owner."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.fernet import Fernet

from accounts.models import Account
from keys import vault
from keys.models import ApiKey, ProviderKey
from keys.services import api_key_create, provider_key_add, provider_key_hint
from tests.conftest import FakeOpenAI, Person

# Shaped like a real OpenAI project key; unique strings so leak searches are meaningful.
OPENAI_KEY = "sk-proj-LEAKCHECKq8Zr4Vn2Tx7Wm1Ys5Pb3Kd9Hf6Jg0Lc"


@pytest.fixture
def vault_keys(settings) -> list[str]:  # type: ignore[no-untyped-def]
    """A fresh single-key vault for the test (so rotation tests control every key)."""
    settings.VAULT_KEYS = [Fernet.generate_key().decode()]
    return list(settings.VAULT_KEYS)


@pytest.fixture
def provider_key(owner: Person, fake_openai: FakeOpenAI, vault_keys: list[str]) -> ProviderKey:
    """The owner's OpenAI key, added through the real flow against the fake server."""
    return provider_key_add(account=owner.account, actor=owner.user, raw_key=OPENAI_KEY)


@pytest.fixture
def api_key(owner: Person, provider_key: ProviderKey) -> tuple[ApiKey, str]:
    return api_key_create(
        account=owner.account, actor=owner.user, provider_key=provider_key, name="prod"
    )


@pytest.fixture
def stored_provider_key(vault_keys: list[str]) -> Callable[..., ProviderKey]:
    """A provider key row written straight to the vault, for tests that are not about
    checking keys with the provider (no network call)."""

    def make(account: Account, raw_key: str = OPENAI_KEY) -> ProviderKey:
        return ProviderKey.objects.create(
            account=account, ciphertext=vault.encrypt(raw_key), hint=provider_key_hint(raw_key)
        )

    return make
