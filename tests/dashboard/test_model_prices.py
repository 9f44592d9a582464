"""Custom model prices on the Caps page: what admits a model the price list does not know."""

from __future__ import annotations

import pytest
from django.urls import reverse

from budgets.model_prices import ModelPriceInvalid, ModelPriceSpec, model_price_upsert
from budgets.models import ModelPrice
from budgets.pricing import price_for

HX = {"HX-Request": "true"}
PRICE = {
    "model": "ft:gpt-4o-mini:acme::x1",
    "input_usd": "0.3",
    "cached_input_usd": "0.15",
    "output_usd": "1.2",
    "max_output_tokens": "4096",
}


def test_a_price_is_saved_and_the_section_rerendered(owner) -> None:  # type: ignore[no-untyped-def]
    response = owner.client.post(
        reverse("model_price_save"),
        {**PRICE, "model": "  FT:gpt-4o-mini:acme::X1 ", "output_usd": "1.234567"},
        headers=HX,
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert 'data-testid="price-saved"' in body and "<html" not in body
    assert 'id="prices-section"' in body and "$0.3" in body
    price = ModelPrice.objects.get(account=owner.account)
    assert price.model == "ft:gpt-4o-mini:acme::x1"  # looked up without regard to case
    assert price.input_micros_per_mtok == 300_000
    assert price.cached_input_micros_per_mtok == 150_000
    assert price.output_micros_per_mtok == 1_234_567  # to the micro-dollar
    assert price.max_output_tokens == 4096
    assert price_for(account_id=owner.account.id, model=price.model).max_output_tokens == 4096


def test_saving_the_same_model_again_changes_its_price(owner) -> None:  # type: ignore[no-untyped-def]
    owner.client.post(reverse("model_price_save"), PRICE)
    response = owner.client.post(reverse("model_price_save"), {**PRICE, "output_usd": "2"})
    assert response.status_code == 302
    [price] = ModelPrice.objects.filter(account=owner.account)
    assert price.output_micros_per_mtok == 2_000_000


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": "my model"}, "model"),
        ({"model": ""}, "model"),
        ({"input_usd": "0"}, "input_usd"),
        ({"output_usd": "0"}, "output_usd"),
        ({"output_usd": "lots"}, "output_usd"),
        ({"cached_input_usd": "0.5"}, "cached_input_usd"),  # above the input price
        ({"max_output_tokens": "0"}, "max_output_tokens"),
    ],
)
def test_a_bad_price_shows_inline_errors_and_writes_nothing(owner, change, field) -> None:  # type: ignore[no-untyped-def]
    response = owner.client.post(reverse("model_price_save"), {**PRICE, **change}, headers=HX)
    assert response.status_code == 200
    assert f'data-testid="price-error-{field}"' in response.content.decode()
    assert not ModelPrice.objects.exists()


def test_a_price_is_removed_only_from_its_own_account(owner, outsider) -> None:  # type: ignore[no-untyped-def]
    spec = ModelPriceSpec(model="my-model", input_micros_per_mtok=1, output_micros_per_mtok=2)
    model_price_upsert(account=owner.account, actor=owner.user, spec=spec)
    stranger = outsider.client.post(reverse("model_price_remove"), {"model": "my-model"})
    assert stranger.status_code == 404
    assert ModelPrice.objects.filter(account=owner.account).exists()
    response = owner.client.post(reverse("model_price_remove"), {"model": "MY-MODEL"}, headers=HX)
    assert response.status_code == 200 and 'id="prices-section"' in response.content.decode()
    assert not ModelPrice.objects.exists()


def test_the_caps_page_lists_the_prices(owner) -> None:  # type: ignore[no-untyped-def]
    owner.client.post(reverse("model_price_save"), {**PRICE, "cached_input_usd": ""})
    body = owner.client.get(reverse("caps")).content.decode()
    assert 'data-testid="prices-table"' in body and "ft:gpt-4o-mini:acme::x1" in body
    assert "as input" in body  # no cached price: cached tokens cost what input does


def test_the_service_refuses_a_free_model() -> None:
    # $0 would let every request through every cap.
    with pytest.raises(ModelPriceInvalid):
        from budgets.model_prices import model_price_validate

        model_price_validate(
            ModelPriceSpec(model="m", input_micros_per_mtok=0, output_micros_per_mtok=1)
        )
