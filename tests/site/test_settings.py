"""The settings module's promises: production refuses to start without secrets, and a
production-like environment passes `manage.py check --deploy`."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]


def _manage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DEBUG"))}
    for name in ("SECRET_KEY", "VAULT_KEYS", "KEY_HASH_SECRET", "DATABASE_URL", "REDIS_URL"):
        base.pop(name, None)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    result = _manage(["check"], {"DEBUG": "false", "DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "SECRET_KEY must be set in the environment when DEBUG is off" in result.stderr
    assert not (tmp_path / "secrets.json").exists()


def test_production_like_environment_passes_check_deploy(tmp_path: Path) -> None:
    env = {
        "DEBUG": "false",
        "DATA_DIR": str(tmp_path),
        "SECRET_KEY": "x" * 20 + Fernet.generate_key().decode(),
        "VAULT_KEYS": Fernet.generate_key().decode(),
        "KEY_HASH_SECRET": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "budgetllm.example.com",
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "smtp.example.com",
    }
    result = _manage(["check", "--deploy", "--fail-level", "WARNING"], env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_development_secrets_are_generated_once_with_mode_0600(tmp_path: Path) -> None:
    env = {"DEBUG": "true", "DATA_DIR": str(tmp_path)}
    assert _manage(["check"], env).returncode == 0
    secrets_file = tmp_path / "secrets.json"
    first = secrets_file.read_text()
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert _manage(["check"], env).returncode == 0
    assert secrets_file.read_text() == first


def test_a_cache_wait_of_zero_is_refused_at_start(tmp_path: Path) -> None:
    # The in-flight lock lives PROXY_CACHE_WAIT_SECONDS; Redis refuses a lock of 0 ms, which
    # made every lookup fail as if the cache were down, silently, on every request.
    result = _manage(["check"], {"DATA_DIR": str(tmp_path), "PROXY_CACHE_WAIT_SECONDS": "0"})
    assert result.returncode != 0
    assert "PROXY_CACHE_WAIT_SECONDS must be at least 1, got 0" in result.stderr


def test_empty_variables_from_env_example_take_their_defaults(tmp_path: Path) -> None:
    # `.env.example` lists LEDGER_BACKEND=, LEDGER_REDIS_URL= and CELERY_BROKER_URL= empty,
    # meaning "the default". Copied into an env file they are set to "", which made the
    # ledger refuse every request ("LEDGER_BACKEND must be 'redis' or 'sql', not ''") and
    # Celery look for RabbitMQ on localhost.
    redis_url = "redis://127.0.0.1:6379/15"
    env = {
        "DATA_DIR": str(tmp_path),
        "REDIS_URL": redis_url,
        "LEDGER_BACKEND": "",
        "LEDGER_REDIS_URL": "",
        "CELERY_BROKER_URL": "",
        "SITE_URL": "",
    }
    code = (
        "from django.conf import settings as s; "
        "print(s.LEDGER_BACKEND, s.LEDGER_REDIS_URL, s.CELERY_BROKER_URL, s.SITE_URL)"
    )
    result = _manage(["shell", "-c", code], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == [
        "redis",
        redis_url,
        redis_url,
        "http://127.0.0.1:8000",
    ]
