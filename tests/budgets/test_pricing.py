from __future__ import annotations

import pytest

from budgets.models import ModelPrice
from budgets.pricing import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    Price,
    UnknownModel,
    cost_micros,
    max_output_tokens_for,
    price_for,
)


def test_prices_come_from_the_offline_database_in_micros_per_million(db) -> None:  # type: ignore[no-untyped-def]
    price = price_for(account_id=0, model="gpt-4o-mini")
    assert price.input_micros_per_mtok == 150_000  # $0.15 / MTok
    assert price.cached_input_micros_per_mtok == 75_000
    assert price.output_micros_per_mtok == 600_000
    assert price.max_output_tokens == 16_384


def test_dated_snapshots_and_embeddings_are_priced(db) -> None:  # type: ignore[no-untyped-def]
    assert price_for(account_id=0, model="gpt-4o-mini-2024-07-18").input_micros_per_mtok == 150_000
    emb = price_for(account_id=0, model="text-embedding-3-small")
    assert emb.output_micros_per_mtok == 0 and emb.max_output_tokens == 0


def test_unknown_model_fails_closed_with_a_way_out(db) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownModel) as exc:
        price_for(account_id=0, model="my-finetune-xyz")
    assert "my-finetune-xyz" in str(exc.value)
    assert "custom price" in str(exc.value)


def test_account_custom_price_extends_and_overrides(owner) -> None:  # type: ignore[no-untyped-def]
    ModelPrice.objects.create(
        account=owner.account,
        model="my-finetune-xyz",
        input_micros_per_mtok=1_000_000,
        output_micros_per_mtok=3_000_000,
        max_output_tokens=2048,
    )
    ModelPrice.objects.create(
        account=owner.account,
        model="gpt-4o-mini",
        input_micros_per_mtok=1,
        cached_input_micros_per_mtok=1,
        output_micros_per_mtok=1,
    )
    custom = price_for(account_id=owner.account.id, model="my-finetune-xyz")
    assert custom.cached_input_micros_per_mtok == 1_000_000  # no discount given: full price
    assert custom.max_output_tokens == 2048
    assert price_for(account_id=owner.account.id, model="gpt-4o-mini").input_micros_per_mtok == 1
    # Other accounts are not affected.
    assert (
        price_for(account_id=owner.account.id + 1, model="gpt-4o-mini").input_micros_per_mtok
        == 150_000
    )


def test_cost_rounds_up_and_prices_cached_input_separately() -> None:
    price = Price(150_000, 75_000, 600_000, 16_384)
    # 1 input token = 0.15 µ$ → rounds up to 1 µ$.
    assert cost_micros(price=price, input_tokens=1, cached_tokens=0, output_tokens=0) == 1
    # 1000 in (400 cached) + 100 out = 600*0.15 + 400*0.075 + 100*0.6 = 90 + 30 + 60.
    assert cost_micros(price=price, input_tokens=1000, cached_tokens=400, output_tokens=100) == 180
    assert cost_micros(price=price, input_tokens=1001, cached_tokens=400, output_tokens=100) == 181


def test_long_context_tier_prices_the_whole_request_above_its_threshold(db) -> None:  # type: ignore[no-untyped-def]
    price = price_for(account_id=0, model="gpt-5.4")
    assert price.tiers, "gpt-5.4 has a long-context tier in genai-prices"
    tier = price.tiers[0]
    small = cost_micros(
        price=price, input_tokens=tier.above_input_tokens, cached_tokens=0, output_tokens=0
    )
    large = cost_micros(
        price=price, input_tokens=tier.above_input_tokens + 1, cached_tokens=0, output_tokens=0
    )
    assert large > small * 1.5


def test_input_written_to_the_prompt_cache_is_priced_and_reserved_at_its_own_price(db) -> None:  # type: ignore[no-untyped-def]
    # gpt-6-sol: $2 input, $2.50 written to the cache (and twice both above 272,000 tokens).
    price = price_for(account_id=0, model="gpt-6-sol")
    assert price.cache_write_micros_per_mtok == 2_500_000
    assert price.worst_input_rate_for(input_tokens=1000) == 2_500_000
    assert price.worst_input_rate_for(input_tokens=300_000) == 5_000_000
    assert cost_micros(price=price, input_tokens=1000, cached_tokens=0, output_tokens=0) == 2000
    written = cost_micros(
        price=price, input_tokens=1000, cached_tokens=0, output_tokens=0, cache_write_tokens=1000
    )
    assert written == 2500
    # A model without a cache-write price bills written input as input.
    mini = price_for(account_id=0, model="gpt-4o-mini")
    assert mini.worst_input_rate_for(input_tokens=10) == mini.input_micros_per_mtok


def test_output_ceiling_table_uses_the_longest_prefix_and_a_safe_default() -> None:
    assert max_output_tokens_for("gpt-4o-mini") == 16_384
    assert max_output_tokens_for("gpt-4.1-nano") == 32_768
    assert max_output_tokens_for("gpt-4-turbo") == 4_096
    assert max_output_tokens_for("some-new-chat-model") == DEFAULT_MAX_OUTPUT_TOKENS


@pytest.mark.parametrize(
    ("model", "ceiling"),
    [
        # What OpenAI accepts as max_completion_tokens (written when a client names none):
        # a larger value is refused ("max_tokens is too large"), or, for gpt-4's 8k
        # context, leaves no room for the prompt ("maximum context length is 8192").
        ("gpt-5-chat-latest", 16_384),
        ("gpt-5.1-chat-latest", 16_384),
        ("gpt-4o-2024-05-13", 4_096),
        ("gpt-4-1106-preview", 4_096),
        ("gpt-4-0125-preview", 4_096),
        ("gpt-4", 4_096),
        ("gpt-4-0613", 4_096),
        ("gpt-5", 128_000),
        ("gpt-4o-2024-08-06", 16_384),
    ],
)
def test_the_written_output_ceiling_is_one_the_model_accepts(model: str, ceiling: int) -> None:
    assert max_output_tokens_for(model) == ceiling
