from __future__ import annotations

from django.urls import reverse

from budgets.models import MICROS_PER_USD, Cap
from keys.models import ApiKey, ProviderKey
from tests.dashboard.conftest import record

HX = {"HX-Request": "true"}


def test_onboarding_walks_provider_key_api_key_cap_and_snippets(
    owner, fake_openai, settings
) -> None:  # type: ignore[no-untyped-def]
    settings.SITE_URL = "https://budget.example"
    page = owner.client.get(reverse("onboarding"))
    assert page.status_code == 200 and b"Connect your OpenAI key" in page.content

    bad = owner.client.post(
        reverse("onboarding"), {"step": "provider", "raw_key": "sk-invalid-123456"}
    )
    assert bad.status_code == 200 and b'data-testid="provider-error"' in bad.content
    assert not ProviderKey.objects.exists()

    ok = owner.client.post(
        reverse("onboarding"), {"step": "provider", "raw_key": "sk-test-1234567890abcd"}
    )
    assert ok.status_code == 302

    created = owner.client.post(reverse("onboarding"), {"step": "key", "name": "my-app"})
    body = created.content.decode()
    assert created.status_code == 200
    raw = created.context["raw_key"]
    assert raw.startswith("bllm_") and ApiKey.objects.filter(account=owner.account).count() == 1
    # The key is filled into every snippet, with the base URL.
    assert body.count(raw) >= 4
    assert 'base_url="https://budget.example/v1"' in body
    assert "https://budget.example/v1/chat/completions" in body
    # The suggested cap is prefilled (within the Free plan's $100 ceiling).
    assert 'value="50.00"' in body

    # Shown once: a reload no longer contains it.
    assert raw not in owner.client.get(reverse("onboarding")).content.decode()

    invalid = owner.client.post(
        reverse("onboarding"), {"step": "cap", "limit_usd": "500"}, headers=HX
    )
    assert invalid.status_code == 200 and b'data-testid="cap-error"' in invalid.content
    valid = owner.client.post(reverse("onboarding"), {"step": "cap", "limit_usd": "20"}, headers=HX)
    assert valid.status_code == 200 and b'data-testid="cap-step-saved"' in valid.content
    assert (
        Cap.objects.get(account=owner.account, scope="account", period="month").limit_micros
        == 20 * MICROS_PER_USD
    )


def test_first_request_indicator_turns_green_when_usage_arrives(owner, key) -> None:  # type: ignore[no-untyped-def]
    waiting = owner.client.get(reverse("onboarding_first_request"), headers=HX)
    assert b'data-state="waiting"' in waiting.content and b"hx-trigger" in waiting.content
    from django.utils import timezone

    record(owner.account, key, timezone.now())
    done = owner.client.get(reverse("onboarding_first_request"), headers=HX)
    assert b'data-state="received"' in done.content and b"hx-trigger" not in done.content
