"""An account's own model prices: for models the price database does not know (a
fine-tuned model, one newer than the database), or to replace its price for one.

The proxy refuses a model it has no price for, because it could not hold a cap for it
(fail closed); a custom price admits it, priced as the account says. Every save or
delete bumps the account's caps version (budgets.signals), so a change applies from the
very next proxied request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db import transaction

from accounts.models import Account, User

from .caps import FieldInvalid
from .models import ModelPrice

# Model-name characters, as OpenAI spells them: "gpt-4o", "ft:gpt-4o-mini:org::abc123".
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")
MAX_OUTPUT_TOKENS_LIMIT = 1_000_000


class ModelPriceInvalid(FieldInvalid):
    """A price the user asked for that we refuse."""


@dataclass(frozen=True)
class ModelPriceSpec:
    model: str
    input_micros_per_mtok: int
    output_micros_per_mtok: int
    cached_input_micros_per_mtok: int | None = None
    max_output_tokens: int = 16_384


def model_price_validate(spec: ModelPriceSpec) -> None:
    name = spec.model.strip()
    if not name or len(name) > 100 or not _MODEL_NAME.fullmatch(name):
        raise ModelPriceInvalid(
            "Name the model exactly as the API knows it, for example "
            "ft:gpt-4o-mini-2024-07-18:my-org::abc123.",
            field="model",
        )
    # A price of $0 would let every request through every cap: caps need a real price.
    if spec.input_micros_per_mtok <= 0:
        raise ModelPriceInvalid("Enter the input price, above $0.", field="input_usd")
    if spec.output_micros_per_mtok <= 0:
        raise ModelPriceInvalid("Enter the output price, above $0.", field="output_usd")
    cached = spec.cached_input_micros_per_mtok
    if cached is not None and not 0 <= cached <= spec.input_micros_per_mtok:
        raise ModelPriceInvalid(
            "Cached input costs from $0 up to the input price.", field="cached_input_usd"
        )
    if not 1 <= spec.max_output_tokens <= MAX_OUTPUT_TOKENS_LIMIT:
        raise ModelPriceInvalid(
            f"Enter a number of tokens from 1 to {MAX_OUTPUT_TOKENS_LIMIT:,}.",
            field="max_output_tokens",
        )


def model_price_upsert(*, account: Account, actor: User | None, spec: ModelPriceSpec) -> ModelPrice:
    """Set the account's price for a model (a second save for the same model changes it).
    Names are kept lower-case: the proxy looks models up without regard to case."""
    model_price_validate(spec)
    with transaction.atomic():
        price, _ = ModelPrice.objects.update_or_create(
            account=account,
            model=spec.model.strip().lower(),
            defaults={
                "input_micros_per_mtok": spec.input_micros_per_mtok,
                "cached_input_micros_per_mtok": spec.cached_input_micros_per_mtok,
                "output_micros_per_mtok": spec.output_micros_per_mtok,
                "max_output_tokens": spec.max_output_tokens,
            },
        )
    return price


def model_price_delete(*, account: Account, actor: User | None, model: str) -> bool:
    """Remove the account's price for `model`; False if it had none. Requests for a model
    the price database does not know are refused again from the next one."""
    for price in ModelPrice.objects.filter(account=account, model=model.strip().lower()):
        price.delete()  # one by one: each delete bumps the caps version
        return True
    return False
