"""The provider-key vault: authenticated encryption with rotatable keys.

`settings.VAULT_KEYS` is a list of Fernet keys. The first one encrypts; every one of
them decrypts, so a new key can be put in front, old ciphertexts keep working, and
`manage.py rotate_vault_keys` re-encrypts everything under the new key before the
old one is dropped from the list.
"""

from __future__ import annotations

import threading

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class VaultError(Exception):
    """A ciphertext that none of the vault keys can open (tampered, truncated, or
    encrypted under a key that is no longer in VAULT_KEYS)."""


_lock = threading.Lock()
_cached: tuple[tuple[str, ...], MultiFernet] | None = None


def _fernet() -> MultiFernet:
    """The MultiFernet for the current VAULT_KEYS, rebuilt only when the setting changes
    (tests override it; production reads it once)."""
    global _cached
    keys = tuple(settings.VAULT_KEYS)
    cached = _cached
    if cached is not None and cached[0] == keys:
        return cached[1]
    if not keys:
        raise ImproperlyConfigured("VAULT_KEYS is empty: set at least one Fernet key.")
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError) as exc:
            # Say which entry is wrong, never what it contains.
            raise ImproperlyConfigured(
                f"VAULT_KEYS entry {position} is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes; make one with "
                "`python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`)."
            ) from exc
    multi = MultiFernet(fernets)
    with _lock:
        _cached = (keys, multi)
    return multi


def encrypt(plain: str) -> str:
    """Encrypt `plain` under the newest vault key (VAULT_KEYS[0])."""
    return _fernet().encrypt(plain.encode()).decode("ascii")


def decrypt(token: str) -> str:
    """Decrypt a vault token with any configured key; VaultError if none can."""
    try:
        return _fernet().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError) as exc:
        raise VaultError(
            "The stored key could not be decrypted: the ciphertext was modified, or it was "
            "encrypted under a vault key that is no longer in VAULT_KEYS."
        ) from exc


def rotate(token: str) -> str:
    """Re-encrypt `token` under the newest vault key (MultiFernet.rotate)."""
    try:
        return _fernet().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeError) as exc:
        raise VaultError(
            "The stored key could not be re-encrypted: none of the keys in VAULT_KEYS "
            "opens it (modified ciphertext, or its vault key was removed too early)."
        ) from exc
