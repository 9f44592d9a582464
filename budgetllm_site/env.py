"""Reading configuration from the environment, and the development secrets file.

Every setting the site reads is listed in `.env.example` with its default.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

TRUE_WORDS = {"1", "true", "yes", "on"}


def env_str(name: str, default: str = "") -> str:
    # Empty means unset, as for the other readers: `.env.example` lists defaults as `X=`.
    return os.environ.get(name) or default


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in TRUE_WORDS


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# The three secrets a development run generates for itself so that `make run` works
# on a fresh clone. Production must set them explicitly (see `load_secret`).
GENERATED_SECRETS = {
    "SECRET_KEY": lambda: secrets.token_urlsafe(50),
    "VAULT_KEYS": lambda: Fernet.generate_key().decode(),
    "KEY_HASH_SECRET": lambda: secrets.token_urlsafe(32),
}


def load_secret(name: str, *, data_dir: Path, debug: bool) -> str:
    """Return secret `name` from the environment, or (DEBUG only) from var/secrets.json.

    With DEBUG off a missing secret stops the site: a generated secret in production
    would silently change on the next deploy and lock everyone out of their keys.
    """
    value = os.environ.get(name, "")
    if value:
        return value
    if not debug:
        raise ImproperlyConfigured(f"{name} must be set in the environment when DEBUG is off.")
    path = data_dir / "secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    if name not in stored:
        stored[name] = GENERATED_SECRETS[name]()
        data_dir.mkdir(parents=True, exist_ok=True)
        # Written with 0600 from the start: the file holds the vault key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh, indent=2)
        os.chmod(path, 0o600)
    return stored[name]
