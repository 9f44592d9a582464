"""`manage.py provision`: a scripted setup that ends with a working, capped bllm_ key."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.models import Account, User
from budgets.models import Cap
from keys.models import ApiKey, ProviderKey
from keys.services import api_key_resolve, api_key_revoke
from tests.conftest import FakeOpenAI

pytestmark = pytest.mark.django_db

KEY = "sk-proj-provisionTEST0123456789abcdef"


def provision(*args: str) -> list[str]:
    out = StringIO()
    call_command("provision", *args, stdout=out)
    return out.getvalue().strip().splitlines()


def test_provision_creates_account_provider_key_caps_and_prints_the_key_last(
    fake_openai: FakeOpenAI,
) -> None:
    lines = provision(
        "--email",
        "Ravi@Example.com",
        "--openai-key",
        KEY,
        "--monthly-cap-usd",
        "50",
        "--daily-cap-usd",
        "5",
        "--run-cap-usd",
        "0.50",
    )
    raw = lines[-1]
    resolved = api_key_resolve(raw=raw)
    assert resolved is not None
    user = User.objects.get(email="ravi@example.com")
    assert resolved.account_id == user.memberships.get().account_id
    caps = {(c.scope, c.period, c.limit_micros, c.api_key_id) for c in Cap.objects.all()}
    assert caps == {
        ("account", "month", 50_000_000, None),
        ("account", "day", 5_000_000, None),
        ("run", "run", 500_000, resolved.api_key_id),
    }
    # What was set, in the words the Caps page uses.
    assert lines[1:4] == [
        "Monthly account cap: $50.00",
        "Daily account cap: $5.00",
        "Per-run cap of key “default”: $0.50",
    ]
    assert fake_openai.stats()["/v1/models"] == 1  # the key was checked
    assert KEY not in "\n".join(lines)  # the provider key is never printed


def test_provision_again_reuses_account_and_provider_key(fake_openai: FakeOpenAI) -> None:
    first = provision("--email", "a@example.com", "--openai-key", KEY, "--daily-cap-usd", "1")
    # The Free plan allows one active bllm_ key: make room for the second.
    api_key_revoke(api_key=ApiKey.objects.get(), actor=None)
    second = provision(
        "--email", "a@example.com", "--openai-key", KEY, "--daily-cap-usd", "2", "--no-validate"
    )
    assert first[-1] != second[-1]
    assert ProviderKey.objects.count() == 1
    assert ApiKey.objects.filter(revoked_at=None).count() == 1
    assert Cap.objects.get(scope="account", period="day").limit_micros == 2_000_000
    assert fake_openai.stats()["/v1/models"] == 1  # --no-validate did not call out


def test_provision_refuses_a_key_the_provider_rejects(fake_openai: FakeOpenAI) -> None:
    with pytest.raises(CommandError, match="rejected"):
        provision("--email", "b@example.com", "--openai-key", "sk-invalid-0123456789abcdefgh")
    assert not ProviderKey.objects.exists()
    assert not User.objects.filter(email="b@example.com").exists()  # no account left behind


def test_provision_refuses_a_malformed_key_before_writing_anything() -> None:
    with pytest.raises(CommandError, match="start with sk-"):
        provision("--email", "m@example.com", "--openai-key", "pk-live-123", "--no-validate")
    assert not User.objects.filter(email="m@example.com").exists()
    assert not Account.objects.exists()


def test_provision_refuses_a_cap_above_the_plan() -> None:
    with pytest.raises(CommandError, match="plan allows"):
        provision(
            "--email",
            "c@example.com",
            "--openai-key",
            KEY,
            "--no-validate",
            "--monthly-cap-usd",
            "5000",
        )
    # Refused after the account, the provider key and the bllm_ key were written: all
    # of it is rolled back.
    assert not User.objects.filter(email="c@example.com").exists()
    assert not Account.objects.exists()
    assert not ProviderKey.objects.exists() and not ApiKey.objects.exists()
