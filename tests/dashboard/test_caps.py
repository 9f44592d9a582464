from __future__ import annotations

import pytest
from django.urls import reverse

from budgets.caps import CapInvalid, CapSpec, cap_upsert
from budgets.models import MICROS_PER_USD, Cap
from tests.dashboard.conftest import make_key

HX = {"HX-Request": "true"}


def test_invalid_cap_rerenders_with_error_and_status_200(owner) -> None:  # type: ignore[no-untyped-def]
    response = owner.client.post(
        reverse("caps"), {"scope": "account", "period": "month", "limit_usd": "-3"}, headers=HX
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert 'data-testid="error-limit_usd"' in body and "<html" not in body
    assert not Cap.objects.exists()


def test_free_plan_caps_monthly_limit_at_100_dollars(owner) -> None:  # type: ignore[no-untyped-def]
    response = owner.client.post(
        reverse("caps"), {"scope": "account", "period": "month", "limit_usd": "150"}, headers=HX
    )
    assert response.status_code == 200
    assert "allows caps up to $100.00" in response.content.decode()
    assert not Cap.objects.exists()


def test_valid_cap_is_saved_and_the_list_rerendered(owner) -> None:  # type: ignore[no-untyped-def]
    response = owner.client.post(
        reverse("caps"),
        {"scope": "account", "period": "month", "limit_usd": "25.50", "thresholds": "50, 90"},
        headers=HX,
    )
    assert response.status_code == 200
    cap = Cap.objects.get(account=owner.account)
    assert cap.limit_micros == 25_500_000 and cap.alert_thresholds == [50, 90]
    assert 'data-testid="cap-saved"' in response.content.decode()


def test_saving_the_same_target_and_period_changes_the_limit(owner) -> None:  # type: ignore[no-untyped-def]
    for amount in ("10", "20"):
        owner.client.post(
            reverse("caps"), {"scope": "account", "period": "day", "limit_usd": amount}
        )
    assert list(Cap.objects.values_list("limit_micros", flat=True)) == [20 * MICROS_PER_USD]


def test_without_htmx_a_valid_cap_redirects(owner) -> None:  # type: ignore[no-untyped-def]
    response = owner.client.post(
        reverse("caps"), {"scope": "account", "period": "day", "limit_usd": "5"}
    )
    assert response.status_code == 302


def test_cap_default_thresholds(owner) -> None:  # type: ignore[no-untyped-def]
    owner.client.post(reverse("caps"), {"scope": "account", "period": "day", "limit_usd": "5"})
    assert Cap.objects.get().alert_thresholds == [50, 80, 100]


def test_key_cap_needs_a_key_of_this_account(owner, outsider) -> None:  # type: ignore[no-untyped-def]
    theirs = make_key(outsider.account, "theirs")
    with pytest.raises(CapInvalid):
        cap_upsert(
            account=owner.account,
            actor=None,
            spec=CapSpec(scope="key", period="day", limit_micros=5),
        )
    with pytest.raises(CapInvalid):
        cap_upsert(
            account=owner.account,
            actor=None,
            spec=CapSpec(scope="key", period="day", limit_micros=5, api_key=theirs),
        )
    response = owner.client.post(
        reverse("caps"),
        {"scope": "key", "period": "day", "limit_usd": "5", "api_key": str(theirs.public_id)},
        headers=HX,
    )
    assert response.status_code == 200 and not Cap.objects.exists()


def test_per_model_and_per_run_caps(owner) -> None:  # type: ignore[no-untyped-def]
    key = make_key(owner.account)
    owner.client.post(
        reverse("caps"), {"scope": "model", "period": "month", "limit_usd": "3", "model": "gpt-4o"}
    )
    owner.client.post(
        reverse("caps"),
        {"scope": "run", "period": "run", "limit_usd": "0.5", "api_key": str(key.public_id)},
    )
    owner.client.post(
        reverse("caps"),
        {"scope": "run", "period": "day", "limit_usd": "0.5", "api_key": str(key.public_id)},
    )
    assert sorted(Cap.objects.values_list("scope", "period", "model", "limit_micros")) == [
        ("model", "month", "gpt-4o", 3_000_000),
        ("run", "run", "", 500_000),
    ]


def test_cap_delete_and_caps_page_renders(owner) -> None:  # type: ignore[no-untyped-def]
    owner.client.post(reverse("caps"), {"scope": "account", "period": "day", "limit_usd": "5"})
    cap = Cap.objects.get()
    page = owner.client.get(reverse("caps"))
    assert page.status_code == 200 and b"Daily account cap" in page.content
    owner.client.post(reverse("cap_remove", args=[cap.public_id]))
    assert not Cap.objects.exists()


def test_caps_are_one_click_away_from_every_page(owner) -> None:  # type: ignore[no-untyped-def]
    # Caps are the product: the nav links to them, not only the dashboard's button.
    for url in ("/keys/", "/alerts/", "/billing/", "/account/settings/", "/welcome/"):
        assert b'<a href="/caps/">Caps</a>' in owner.client.get(url).content, url


def test_a_model_cap_under_another_name_of_a_capped_model_is_refused(owner) -> None:  # type: ignore[no-untyped-def]
    # The ledger counts "GPT-4o" and "gpt-4o-2024-08-06" as gpt-4o and applies only the
    # strictest of such caps: a second row would list a limit that never applies (a $50
    # cap on the snapshot, refused at the $5 of gpt-4o's).
    def model_cap(model: str, dollars: int, period: str = "month") -> Cap:
        spec = CapSpec(
            scope="model", period=period, limit_micros=dollars * MICROS_PER_USD, model=model
        )
        return cap_upsert(account=owner.account, actor=None, spec=spec)

    model_cap("gpt-4o", 5)
    for other_name in ("GPT-4o", "gpt-4o-2024-08-06"):
        with pytest.raises(CapInvalid) as exc:
            model_cap(other_name, 50)
        assert exc.value.field == "model"
        assert "cap on model gpt-4o already covers" in str(exc.value)
    assert list(Cap.objects.values_list("model", "limit_micros")) == [("gpt-4o", 5_000_000)]
    model_cap("gpt-4o", 7)  # the same name changes that cap, as before
    model_cap("GPT-4o", 1, period="day")  # another period is another cap
    model_cap("gpt-4o-mini", 1)  # another model
    assert sorted(Cap.objects.values_list("model", "period", "limit_micros")) == [
        ("GPT-4o", "day", 1_000_000),
        ("gpt-4o", "month", 7_000_000),
        ("gpt-4o-mini", "month", 1_000_000),
    ]
