"""Model prices in integer micro-dollars per million tokens.

Prices come from genai-prices' bundled snapshot (works offline; we never let it fetch
updates at request time). An account's `ModelPrice` rows override or extend it. A model
neither knows is refused (`UnknownModel`): we fail closed rather than let an unpriced
request through a hard cap.

genai-prices has no output-token ceilings, so `MAX_OUTPUT_TOKENS` below keeps a small
table per model family; the reservation for a request that names no `max_tokens` is
priced with (and clamped to) that ceiling.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from genai_prices import data_snapshot
from genai_prices import types as gp_types

MICROS_PER_USD = 1_000_000
TOKENS_PER_MTOK = 1_000_000


@dataclass(frozen=True)
class PriceTier:
    """Long-context pricing: when a request's input exceeds `above_input_tokens`, the
    whole request is priced at these rates (genai-prices' "cliff" tiers)."""

    above_input_tokens: int
    input_micros_per_mtok: int
    cached_input_micros_per_mtok: int
    output_micros_per_mtok: int
    cache_write_micros_per_mtok: int | None = None


@dataclass(frozen=True)
class Price:
    """Integer micro-dollars per million tokens."""

    input_micros_per_mtok: int
    cached_input_micros_per_mtok: int
    output_micros_per_mtok: int
    max_output_tokens: int  # the model's own output ceiling
    # Ascending by threshold; empty for flat-priced models.
    tiers: tuple[PriceTier, ...] = ()
    # Where the price came from: "genai-prices" or "custom".
    source: str = "genai-prices"
    # Input written to the prompt cache, where the provider bills it above the input price
    # (gpt-5.6 and later: 1.25x); None: billed as input.
    cache_write_micros_per_mtok: int | None = None

    def rates_for(self, *, input_tokens: int) -> tuple[int, int, int]:
        """(input, cached input, output) micro-dollars per MTok for a request of this size."""
        rates = (
            self.input_micros_per_mtok,
            self.cached_input_micros_per_mtok,
            self.output_micros_per_mtok,
        )
        for tier in self.tiers:
            if input_tokens > tier.above_input_tokens:
                rates = (
                    tier.input_micros_per_mtok,
                    tier.cached_input_micros_per_mtok,
                    tier.output_micros_per_mtok,
                )
        return rates

    def cache_write_rate_for(self, *, input_tokens: int) -> int:
        """Micro-dollars per MTok of input written to the prompt cache."""
        rate, write = self.input_micros_per_mtok, self.cache_write_micros_per_mtok
        for tier in self.tiers:
            if input_tokens > tier.above_input_tokens:
                rate, write = tier.input_micros_per_mtok, tier.cache_write_micros_per_mtok
        return rate if write is None else write

    def worst_input_rate_for(self, *, input_tokens: int) -> int:
        """The most one input token can cost: uncached, or written to the cache if that
        costs more. A reservation cannot know which the provider will do."""
        rate = self.rates_for(input_tokens=input_tokens)[0]
        return max(rate, self.cache_write_rate_for(input_tokens=input_tokens))


class UnknownModel(Exception):
    """The model has no price: neither genai-prices nor the account knows it."""

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(
            f"The model '{model}' has no known price, so BudgetLLM cannot enforce your caps "
            "for it and refuses the request. If the model exists, set a custom price for it "
            "on the Caps page of the dashboard (input, cached input and output price per "
            "million tokens), then retry."
        )


# Documented output ceilings, longest prefix wins. An embedding model produces no output.
# Keep values at or below the provider's real ceiling: when a client names no max_tokens
# we write this value into the request, and a value above the real ceiling would make
# the provider reject it.
MAX_OUTPUT_TOKENS: dict[str, int] = {
    "text-embedding-": 0,
    "gpt-3.5-turbo": 4_096,
    # gpt-4 has an 8,192-token context in all: writing 8,192 would leave no room for the
    # prompt ("maximum context length is 8192 tokens"), so only half is ever written.
    "gpt-4": 4_096,
    "gpt-4-0125-preview": 4_096,
    "gpt-4-1106-preview": 4_096,
    "gpt-4-vision-preview": 4_096,
    "gpt-4-turbo": 4_096,
    "gpt-4-32k": 8_192,
    "gpt-4o": 16_384,
    "gpt-4o-2024-05-13": 4_096,
    "gpt-4o-mini": 16_384,
    "chatgpt-4o": 16_384,
    "gpt-4.1": 32_768,
    "gpt-4.5": 16_384,
    "gpt-5": 128_000,
    "gpt-6": 128_000,
    "o1": 100_000,
    "o1-mini": 65_536,
    "o1-preview": 32_768,
    "o3": 100_000,
    "o4-mini": 100_000,
    "codex-mini": 100_000,
}
# For a priced model of an unlisted family: small enough that every current chat model
# accepts it as max_tokens, so writing it into a request never causes a provider error.
DEFAULT_MAX_OUTPUT_TOKENS = 4_096


def max_output_tokens_for(model: str) -> int:
    name = model.lower()
    if name.startswith("gpt-5") and "-chat" in name:
        return 16_384  # gpt-5-chat-latest, gpt-5.1-chat-latest...: not gpt-5's 128,000
    best: tuple[int, int] | None = None
    for prefix, ceiling in MAX_OUTPUT_TOKENS.items():
        if name.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), ceiling)
    return best[1] if best else DEFAULT_MAX_OUTPUT_TOKENS


def _usd_per_mtok_to_micros(value: Decimal) -> int:
    # Round up: a price a hair too high keeps caps conservative.
    return int((value * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def _rate(value: Decimal | gp_types.TieredPrices | None, *, above: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, gp_types.TieredPrices):
        chosen = value.base
        if above is not None:
            for tier in value.tiers:
                if above >= tier.start:
                    chosen = tier.price
        return _usd_per_mtok_to_micros(chosen)
    return _usd_per_mtok_to_micros(value)


# Tried first: the proxy speaks OpenAI's API, so an OpenAI model name means OpenAI's price
# even when another provider in the database lists a model of the same name.
PREFERRED_PROVIDER = "openai"


@functools.lru_cache(maxsize=1024)
def _genai_price(model: str, day: dt.date) -> Price | None:
    snapshot = data_snapshot.get_snapshot()
    found = None
    for provider_id in (PREFERRED_PROVIDER, None):
        try:
            found = snapshot.find_provider_model(model, None, provider_id, None)
            break
        except LookupError:
            continue
    if found is None:
        return None
    _, info = found
    when = dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)
    prices = info.get_prices(when)
    raw_in = getattr(prices, "input_mtok", None)
    if raw_in is None:
        # Priced per hour of audio, per character, per image…: not something a token
        # bound can reserve for.
        return None
    raw_cached = getattr(prices, "cache_read_mtok", None)
    raw_out = getattr(prices, "output_mtok", None)
    raw_write = getattr(prices, "cache_write_mtok", None)
    starts = sorted(
        {
            tier.start
            for raw in (raw_in, raw_cached, raw_out, raw_write)
            if isinstance(raw, gp_types.TieredPrices)
            for tier in raw.tiers
        }
    )

    def rates(above: int | None) -> tuple[int, int, int, int | None]:
        input_rate = _rate(raw_in, above=above) or 0
        cached = _rate(raw_cached, above=above)
        # No cached-input price listed: the provider gives no discount, so charge the
        # full input price for cached tokens.
        return (
            input_rate,
            input_rate if cached is None else cached,
            _rate(raw_out, above=above) or 0,
            _rate(raw_write, above=above),
        )

    base = rates(None)
    tiers = tuple(
        PriceTier(start, *rates(start + 1))  # the tier applies above its start
        for start in starts
    )
    return Price(
        input_micros_per_mtok=base[0],
        cached_input_micros_per_mtok=base[1],
        output_micros_per_mtok=base[2],
        max_output_tokens=max_output_tokens_for(model),
        tiers=tiers,
        cache_write_micros_per_mtok=base[3],
    )


def custom_price(
    *,
    input_micros_per_mtok: int,
    cached_input_micros_per_mtok: int | None,
    output_micros_per_mtok: int,
    max_output_tokens: int,
) -> Price:
    return Price(
        input_micros_per_mtok=input_micros_per_mtok,
        cached_input_micros_per_mtok=(
            input_micros_per_mtok
            if cached_input_micros_per_mtok is None
            else cached_input_micros_per_mtok
        ),
        output_micros_per_mtok=output_micros_per_mtok,
        max_output_tokens=max_output_tokens,
        source="custom",
    )


def catalogue_price(*, model: str, today: dt.date | None = None) -> Price | None:
    """The price database's price for `model` today (UTC), or None."""
    return _genai_price(model.strip(), today or dt.datetime.now(dt.UTC).date())


def price_for(*, account_id: int, model: str) -> Price:
    """The price the account pays for `model`: its custom price, else the database's."""
    from .models import ModelPrice

    row = ModelPrice.objects.filter(account_id=account_id, model=model.strip()).first()
    if row is not None:
        return custom_price(
            input_micros_per_mtok=row.input_micros_per_mtok,
            cached_input_micros_per_mtok=row.cached_input_micros_per_mtok,
            output_micros_per_mtok=row.output_micros_per_mtok,
            max_output_tokens=row.max_output_tokens,
        )
    price = catalogue_price(model=model)
    if price is None:
        raise UnknownModel(model)
    return price


def cost_micros(
    *,
    price: Price,
    input_tokens: int,
    cached_tokens: int,
    output_tokens: int,
    cache_write_tokens: int = 0,
) -> int:
    """Cost in micro-dollars, rounded up. `input_tokens` includes the cached ones and the
    ones written to the cache (as OpenAI reports `prompt_tokens`)."""
    exact = cost_micro_micros(
        price=price,
        input_tokens=input_tokens,
        cached_tokens=cached_tokens,
        output_tokens=output_tokens,
        cache_write_tokens=cache_write_tokens,
    )
    return ceil_div(exact, TOKENS_PER_MTOK)


def cost_micro_micros(
    *,
    price: Price,
    input_tokens: int,
    cached_tokens: int,
    output_tokens: int,
    cache_write_tokens: int = 0,
) -> int:
    """The exact cost in millionths of a micro-dollar (integer, no rounding)."""
    input_tokens = max(input_tokens, 0)
    cached = min(max(cached_tokens, 0), input_tokens)
    written = min(max(cache_write_tokens, 0), input_tokens - cached)
    rate_in, rate_cached, rate_out = price.rates_for(input_tokens=input_tokens)
    cost = (
        (input_tokens - cached) * rate_in + cached * rate_cached + max(output_tokens, 0) * rate_out
    )
    if written:
        rate_write = price.cache_write_rate_for(input_tokens=input_tokens)
        cost += written * max(rate_write - rate_in, 0)
    return cost


def ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)
