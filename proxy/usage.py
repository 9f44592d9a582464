"""Token counts from the provider's usage objects (chat, responses, embeddings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Tokens:
    input: int  # includes cached input, as OpenAI reports it
    cached: int
    output: int  # includes reasoning tokens
    cache_write: int = 0  # input written to the prompt cache (billed above input on some models)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


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
