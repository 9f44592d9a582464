"""Budgets: admit a request against every cap that applies, settle it, record usage.

The proxy awaits `budget_admit` before forwarding a request, then `budget_settle` (or
`budget_release`) once the provider has answered. Together they keep the promise the
product is sold on: spend never passes a cap, also under concurrency and streaming.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from .money import usd, usd_str
from .pricing import Price, UnknownModel
from .windows import describe_reset

__all__ = [
    "AccountPaused",
    "AdmitRequest",
    "Admission",
    "BudgetExceeded",
    "CapStatus",
    "KeyPaused",
    "LedgerUnavailable",
    "Refused",
    "UnknownModel",
    "UsageData",
]


class ResolvedKeyLike(Protocol):
    """What budgets reads from `keys.services.ResolvedKey` (structural, so budgets does
    not import the keys app's service layer)."""

    @property
    def api_key_id(self) -> int: ...
    @property
    def api_key_name(self) -> str: ...
    @property
    def account_id(self) -> int: ...
    @property
    def account_timezone(self) -> str: ...
    @property
    def account_paused(self) -> bool: ...
    @property
    def key_paused(self) -> bool: ...


@dataclass(frozen=True)
class AdmitRequest:
    key: ResolvedKeyLike
    endpoint: str  # "chat.completions" | "responses" | "embeddings"
    model: str
    input_tokens_bound: int  # an upper bound: UTF-8 bytes of the prompt-bearing fields
    requested_output_tokens: int | None  # what the client asked for (None = not given)
    choices: int = 1  # n for chat; the output bound is per choice
    run_id: str = ""
    run_budget_micros: int | None = None  # X-BudgetLLM-Run-Budget-USD: may only LOWER
    min_output_tokens: int = 16  # refuse if not even this many output tokens fit
    # The proxy's request id, if it has one already: the reservation is keyed on it, so a
    # reservation that expires (a worker died) is recorded under the same request id.
    request_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Admission:
    reservation_id: str
    reserved_micros: int
    price: Price
    # Per choice. The proxy writes it into the body (max_tokens / max_completion_tokens /
    # max_output_tokens) when `clamped`.
    output_tokens_allowed: int
    # True when the client asked for more than the budget affords, or named no limit (then
    # we write our bound so the provider cannot generate more than was reserved).
    clamped: bool
    # The tightest applicable cap's remaining AFTER this reservation; None = no caps.
    remaining_micros: int | None
    account_id: int = 0
    api_key_id: int = 0


@dataclass(frozen=True)
class UsageData:
    request_id: uuid.UUID
    endpoint: str
    model: str
    run_id: str
    input_tokens: int  # includes cached_tokens (as OpenAI's prompt_tokens does)
    cached_tokens: int
    output_tokens: int
    cost_micros: int
    saved_micros: int
    cache_status: str  # HIT / MISS / BYPASS
    http_status: int
    latency_ms: int


@dataclass(frozen=True)
class CapStatus:
    """One cap as the dashboard shows it, for the current window."""

    cap_id: int
    cap_public_id: uuid.UUID
    scope: str
    period: str
    api_key_id: int | None
    model: str
    limit_micros: int
    spent_micros: int
    reserved_micros: int
    window_start: dt.datetime | None
    resets_at: dt.datetime | None
    # Set when the cap has refused a request in this window (or its spend reached the
    # limit): the key shows as paused until the window rolls over or the limit is raised.
    capped: bool

    @property
    def remaining_micros(self) -> int:
        return max(self.limit_micros - self.spent_micros - self.reserved_micros, 0)

    @property
    def percent(self) -> int:
        """Spent (settled) as a whole percentage of the limit, 100 when the limit is 0."""
        if self.limit_micros <= 0:
            return 100
        return min(100 * self.spent_micros // self.limit_micros, 999)


# --- Refusals -------------------------------------------------------------------------


class Refused(Exception):
    """Base of every refusal the proxy turns into an OpenAI-shaped error."""

    http_status = 400
    error_type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def extra_fields(self) -> dict[str, Any]:
        return {}

    def to_openai_error(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "code": self.code,
                "param": None,
                **self.extra_fields(),
            }
        }


SCOPE_WORDS = {
    "account": "account",
    "key": "key",
    "model": "model",
    "run": "run",
}
PERIOD_WORDS = {"day": "Daily", "month": "Monthly", "run": "Per-run"}


class BudgetExceeded(Refused):
    """402: admitting the request could take spend past a cap."""

    http_status = 402
    error_type = "budget_exceeded"

    def __init__(
        self,
        *,
        scope: str,
        period: str,
        limit_micros: int,
        spent_micros: int,
        reserved_micros: int,
        resets_at: dt.datetime | None,
        subject: str = "",
        needed_micros: int | None = None,
    ) -> None:
        self.scope = scope
        self.period = period
        self.limit_micros = limit_micros
        self.spent_micros = spent_micros
        self.reserved_micros = reserved_micros
        self.resets_at = resets_at
        self.needed_micros = needed_micros
        self.code = f"{scope}_{period}_cap"
        name = f"{PERIOD_WORDS.get(period, period)} {SCOPE_WORDS.get(scope, scope)} cap"
        if subject:
            name += f" ({subject})"
        in_flight = (
            f", {usd(reserved_micros)} held by requests in flight" if reserved_micros else ""
        )
        needed = (
            f" This request needs up to {usd(needed_micros)} even with the shortest answer."
            if needed_micros
            else ""
        )
        super().__init__(
            f"{name} of {usd(limit_micros)} reached: {usd(spent_micros)} spent{in_flight}; "
            f"{describe_reset(resets_at)}.{needed}"
        )

    def extra_fields(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "period": self.period,
            "limit_usd": usd_str(self.limit_micros),
            "spent_usd": usd_str(self.spent_micros),
            "reserved_usd": usd_str(self.reserved_micros),
            "resets_at": self.resets_at.isoformat() if self.resets_at else None,
        }


class KeyPaused(Refused):
    http_status = 403
    error_type = "key_paused"
    code = "key_paused"

    def __init__(self, key_name: str = "") -> None:
        named = f" '{key_name}'" if key_name else ""
        super().__init__(
            f"The BudgetLLM key{named} is paused (kill-switch). Resume it on the Keys page "
            "of the dashboard to send requests again."
        )


class AccountPaused(Refused):
    http_status = 403
    error_type = "account_paused"
    code = "account_paused"

    def __init__(self) -> None:
        super().__init__(
            "This BudgetLLM account is paused (kill-switch): every request is refused. "
            "Resume it from the dashboard to send requests again."
        )


class LedgerUnavailable(Refused):
    """503: the spend ledger's store cannot be reached, so no cap can be checked."""

    http_status = 503
    error_type = "ledger_unavailable"
    code = "ledger_unavailable"

    def __init__(self, what: str) -> None:
        super().__init__(
            f"BudgetLLM cannot reach its spend ledger ({what}), so it cannot guarantee your "
            "caps and refuses the request rather than let it through. Retry shortly."
        )


def unknown_model_error(exc: UnknownModel) -> dict[str, Any]:
    """The 400 envelope for a model without a price (code model_not_priced)."""
    return {
        "error": {
            "message": str(exc),
            "type": "invalid_request_error",
            "code": "model_not_priced",
            "param": "model",
        }
    }


# --- Services (implemented below) -------------------------------------------------------


async def budget_admit(req: AdmitRequest) -> Admission:
    raise NotImplementedError


async def budget_settle(*, admission: Admission, usage: UsageData) -> None:
    raise NotImplementedError


async def budget_release(*, admission: Admission, usage: UsageData | None = None) -> None:
    raise NotImplementedError


def record_cache_hit(*, key: ResolvedKeyLike, usage: UsageData) -> None:
    raise NotImplementedError


async def arecord_cache_hit(*, key: ResolvedKeyLike, usage: UsageData) -> None:
    raise NotImplementedError


def cap_status(*, account: Any) -> list[CapStatus]:
    raise NotImplementedError
