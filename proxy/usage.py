"""Token counts from the provider's usage objects (chat, responses, embeddings)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any


@dataclass(frozen=True, slots=True)
class Tokens:
    input: int  # includes cached input, as OpenAI reports it
    cached: int
    output: int  # includes reasoning tokens
    cache_write: int = 0  # input written to the prompt cache (billed above input on some models)


_MAX_COUNT = Decimal(10**15)


def _int(value: Any) -> int:
    if type(value) is int:  # what OpenAI sends: the fast path
        return value if value > 0 else 0
    # A count written as 1000.0 or "1000" (a gateway in front of the provider) was read
    # as 0 and the request settled for nothing: read it, rounded up (never under-count).
    if isinstance(value, float | str):
        try:
            number = Decimal(value)
        except ArithmeticError:
            return 0
        if not number.is_nan() and number > 0:
            # Capped before int(): "1e999999999" must not build a billion-digit int. The
            # cap is more tokens than any cap's worth of spend at any price.
            number = min(number, _MAX_COUNT)
            return int(number.to_integral_value(rounding=ROUND_CEILING))
    return 0


def tokens_from_usage(usage: dict[str, Any] | None) -> Tokens | None:
    """Reads both shapes: chat/embeddings (prompt/completion) and responses (input/output)."""
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage or "output_tokens" in usage:
        details = usage.get("input_tokens_details") or {}
        return Tokens(
            input=_int(usage.get("input_tokens")),
            cached=_int(details.get("cached_tokens")),
            output=_int(usage.get("output_tokens")),
            cache_write=_int(details.get("cache_write_tokens")),
        )
    if "prompt_tokens" in usage:
        details = usage.get("prompt_tokens_details") or {}
        return Tokens(
            input=_int(usage.get("prompt_tokens")),
            cached=_int(details.get("cached_tokens")),
            output=_int(usage.get("completion_tokens")),
            cache_write=_int(details.get("cache_write_tokens")),
        )
    return None
