"""Budgets: admit a request against every cap that applies, settle it, record usage.

The proxy awaits `budget_admit` before forwarding a request, then `budget_settle` (or
`budget_release`) once the provider has answered. Together they keep the promise the
product is sold on: spend never passes a cap, also under concurrency and streaming.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from .ledger import (
    MAX_EXACT,
    CounterBatch,
    CounterSpec,
    CounterState,
    Ledger,
    LedgerError,
    Quote,
    ReserveOutcome,
    StaleCaps,
    db_step,
    get_ledger,
)
from .money import usd, usd_str
from .pricing import Price, UnknownModel, catalogue_price, custom_price
from .windows import DAY, MONTH, RUN, Window, describe_reset, window_for

logger = logging.getLogger(__name__)

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
    # When the counters were charged: the usage record carries this time, so a request
    # that straddles midnight is counted in the same day by the ledger and the dashboard.
    reserved_at: dt.datetime | None = None


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
        # "Per-run cap", not "Per-run run cap": a run cap's scope and period are one word.
        words = [PERIOD_WORDS.get(period, period)]
        if scope != period:
            words.append(SCOPE_WORDS.get(scope, scope))
        name = " ".join([*words, "cap"])
        if subject:
            name += f" ({subject})"
        in_flight = (
            f", {usd(reserved_micros)} held by requests in flight" if reserved_micros else ""
        )
        left = limit_micros - spent_micros - reserved_micros
        if left > 0:
            # Not reached: this request's worst case does not fit in what is left.
            needs = (
                f"up to {usd(needed_micros)} even with the shortest answer"
                if needed_micros
                else "more"
            )
            reset = describe_reset(resets_at)
            super().__init__(
                f"{name} of {usd(limit_micros)} has {usd(left)} left ({usd(spent_micros)} "
                f"spent{in_flight}); this request needs {needs}. {reset[:1].upper()}{reset[1:]}."
            )
            return
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


class AccountGone(Refused):
    """401: the key's account was deleted after the proxy resolved (and cached) the key.

    The proxy keeps a resolved key for PROXY_KEY_CACHE_SECONDS, so requests can still
    arrive for an account that no longer exists: they are refused as an unknown key would
    be, not with an internal error."""

    http_status = 401
    code = "invalid_api_key"

    def __init__(self) -> None:
        super().__init__(
            "Incorrect API key provided: its BudgetLLM account no longer exists. Use a key "
            "of an existing account; manage your keys at /keys/."
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


# --- Caps and prices of an account, as admission needs them -----------------------------

# "-2024-08-06", and the older month-and-day form "-0613" / "-0125" (gpt-4-0613,
# gpt-3.5-turbo-0125): both priced, both the family a cap names.
DATED_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


def canonical_model(model: str) -> str:
    """'gpt-4o-2024-08-06', 'GPT-4o' (and 'gpt-4-0613' for 'gpt-4') count against a cap
    on 'gpt-4o'."""
    return DATED_SNAPSHOT.sub("", model.strip().lower())


@dataclass(frozen=True)
class CapRow:
    id: int
    public_id: uuid.UUID
    scope: str
    period: str
    api_key_id: int | None
    model: str  # canonical
    limit_micros: int


@dataclass(frozen=True)
class AccountConfig:
    account_id: int
    caps: tuple[CapRow, ...]
    prices: dict[str, Price]  # custom prices by lower-cased model name
    plan: str
    plan_monthly_max_micros: int | None
    version: str | None = None
    loaded_at: float = 0.0
    # Counter plans derived from this config (`_counter_plan`): they go when it goes, so a
    # caps change (a new config) can never be answered from an old plan.
    plans: dict[tuple[int, str, str, str], CounterPlan] = dataclasses.field(
        default_factory=dict, init=False, compare=False, repr=False
    )


def load_account_config(account_id: int) -> AccountConfig:
    """Two small indexed queries (+ the plan); run at admit time or when the cache is stale."""
    from accounts.models import Account
    from billing.entitlements import entitlements_for

    from .models import Cap, ModelPrice

    try:
        account = Account.objects.get(id=account_id)
    except Account.DoesNotExist:
        # Deleted while a worker still had its key cached (see AccountGone).
        raise AccountGone() from None
    caps = tuple(
        CapRow(
            id=c.id,
            public_id=c.public_id,
            scope=c.scope,
            period=c.period,
            api_key_id=c.api_key_id,
            model=canonical_model(c.model),
            limit_micros=c.limit_micros,
        )
        for c in Cap.objects.filter(account_id=account_id)
    )
    prices = {
        p.model.strip().lower(): custom_price(
            input_micros_per_mtok=p.input_micros_per_mtok,
            cached_input_micros_per_mtok=p.cached_input_micros_per_mtok,
            output_micros_per_mtok=p.output_micros_per_mtok,
            max_output_tokens=p.max_output_tokens,
        )
        for p in ModelPrice.objects.filter(account_id=account_id)
    }
    ent = entitlements_for(account)
    return AccountConfig(
        account_id=account_id,
        caps=caps,
        prices=prices,
        plan=ent.plan,
        plan_monthly_max_micros=ent.max_monthly_cap_micros,
        loaded_at=time.monotonic(),
    )


_config_cache: dict[int, AccountConfig] = {}


def _cached_config(account_id: int) -> AccountConfig | None:
    config = _config_cache.get(account_id)
    if config is None:
        return None
    if time.monotonic() - config.loaded_at > settings.LEDGER_CONFIG_CACHE_SECONDS:
        return None
    return config


def caps_changed(*, account_id: int) -> None:
    """Call after any change to an account's caps, custom prices or plan: the very next
    request re-reads them (every process: the version lives in the ledger's store)."""
    _config_cache.pop(account_id, None)
    try:
        get_ledger().bump_caps_version(account_id)
    except LedgerError:
        # The store is down: requests are refused until it is back; the cache's max age
        # (LEDGER_CONFIG_CACHE_SECONDS) bounds how long a stale cap could be used after.
        logger.warning("could not bump caps version of account %s", account_id)


def price_in(config: AccountConfig, model: str) -> Price:
    custom = config.prices.get(model.strip().lower())
    if custom is not None:
        return custom
    price = catalogue_price(model=model)
    if price is None:
        raise UnknownModel(model)
    return price


# --- Planning an admission ----------------------------------------------------------------


@dataclass(frozen=True)
class CounterInfo:
    """Who a counter belongs to, for the refusal message."""

    scope: str
    period: str
    subject: str
    resets_at: dt.datetime | None


@dataclass(frozen=True)
class Plan:
    counters: tuple[CounterSpec, ...]
    infos: tuple[CounterInfo, ...]
    quote: Quote
    price: Price
    embeddings: bool
    batch: CounterBatch | None = None  # the reused windowed counters `counters` begin with


def _strictest(limits: list[int]) -> int | None:
    return min(limits) if limits else None


def counter_key(
    *, scope: str, period: str, label: str, account_id: int, api_key_id: int | None, model: str
) -> str:
    if scope == "account":
        return f"account:{account_id}:{period}:{label}"
    if scope == "key":
        return f"key:{api_key_id}:{period}:{label}"
    if scope == "model":
        if api_key_id:
            return f"keymodel:{api_key_id}:{model}:{period}:{label}"
        return f"model:{account_id}:{model}:{period}:{label}"
    raise ValueError(scope)


def run_counter_key(*, api_key_id: int, run_id: str) -> str:
    return f"run:{api_key_id}:{run_id}"


def _targets(
    *, account_id: int, api_key_id: int, model: str, now: dt.datetime, tz_name: str
) -> list[tuple[str, str, int | None, str, Window]]:
    """(scope, period, api_key_id, model, window) of every time-windowed counter a request
    of this key and model moves. Counters are kept whether or not a cap exists yet, so a
    cap set mid-month starts from what was already spent this month."""
    day = window_for(period=DAY, now=now, tz_name=tz_name)
    month = window_for(period=MONTH, now=now, tz_name=tz_name)
    out: list[tuple[str, str, int | None, str, Window]] = []
    for window in (day, month):
        out.append(("account", window.period, None, "", window))
        out.append(("key", window.period, api_key_id, "", window))
        out.append(("model", window.period, None, model, window))
        out.append(("model", window.period, api_key_id, model, window))
    return out


def _limit(
    config: AccountConfig, *, scope: str, period: str, api_key_id: int | None, model: str
) -> tuple[int | None, str]:
    """The strictest limit among the caps on this counter, and a note on where it came
    from when not from a Cap row (the plan)."""
    limits = [
        c.limit_micros
        for c in config.caps
        if c.scope == scope
        and c.period == period
        and (scope == "account" or c.api_key_id == api_key_id)
        and (scope != "model" or c.model == model)
    ]
    limit = _strictest(limits)
    note = ""
    if scope == "account" and period == MONTH and config.plan_monthly_max_micros is not None:
        if limit is None or config.plan_monthly_max_micros < limit:
            limit = config.plan_monthly_max_micros
            note = f"the {config.plan.title()} plan's limit"
    return limit, note


@dataclass(frozen=True)
class CounterPlan:
    """The time-windowed counters of one key and model, and the model's price: what every
    request of that key and model reserves against until the day rolls over. Built once
    per window and reused, instead of eight counters' windows, keys and limits per request."""

    batch: CounterBatch
    infos: tuple[CounterInfo, ...]
    price: Price
    valid_from: float  # unix seconds: the window's start
    valid_until: float  # the next day (account zone) or UTC day (the price date), first


_MAX_PLANS = 1000


def _counter_plan(
    config: AccountConfig, key: ResolvedKeyLike, model_name: str, now: dt.datetime
) -> CounterPlan:
    slot = (key.api_key_id, key.api_key_name, key.account_timezone, model_name)
    plan = config.plans.get(slot)
    stamp = now.timestamp()
    if plan is not None and plan.valid_from <= stamp < plan.valid_until:
        return plan
    price = price_in(config, model_name)
    model = canonical_model(model_name)
    retention = dt.timedelta(days=settings.LEDGER_COUNTER_RETENTION_DAYS)
    counters: list[CounterSpec] = []
    infos: list[CounterInfo] = []
    targets = _targets(
        account_id=key.account_id,
        api_key_id=key.api_key_id,
        model=model,
        now=now,
        tz_name=key.account_timezone,
    )
    for scope, period, api_key_id, cap_model, window in targets:
        limit, note = _limit(
            config, scope=scope, period=period, api_key_id=api_key_id, model=cap_model
        )
        counters.append(
            CounterSpec(
                key=counter_key(
                    scope=scope,
                    period=period,
                    label=window.label,
                    account_id=key.account_id,
                    api_key_id=api_key_id,
                    model=cap_model,
                ),
                limit_micros=limit,
                window_start=window.start,
                expires_at=(window.resets_at + retention) if window.resets_at else None,
            )
        )
        subject = note
        if scope == "key":
            subject = f"key '{key.api_key_name}'"
        elif scope == "model":
            subject = f"model {cap_model}" + (f", key '{key.api_key_name}'" if api_key_id else "")
        infos.append(CounterInfo(scope, period, subject, window.resets_at))
    day = targets[0][4]
    # catalogue prices are dated (UTC): a plan never outlives the UTC day it priced.
    utc_midnight = dt.datetime.combine(now.astimezone(dt.UTC).date(), dt.time(0), tzinfo=dt.UTC)
    assert day.start is not None and day.resets_at is not None  # noqa: S101 - a day window
    plan = CounterPlan(
        batch=CounterBatch(tuple(counters)),
        infos=tuple(infos),
        price=price,
        valid_from=max(day.start, utc_midnight).timestamp(),
        valid_until=min(day.resets_at, utc_midnight + dt.timedelta(days=1)).timestamp(),
    )
    if len(config.plans) >= _MAX_PLANS:
        config.plans.clear()
    config.plans[slot] = plan
    return plan


def plan_admission(req: AdmitRequest, config: AccountConfig, *, now: dt.datetime) -> Plan:
    key = req.key
    base = _counter_plan(config, key, req.model, now)
    price = base.price
    retention = dt.timedelta(days=settings.LEDGER_COUNTER_RETENTION_DAYS)
    counters = base.batch.specs
    infos = base.infos
    if req.run_id:
        run_limits = [
            c.limit_micros
            for c in config.caps
            if c.scope == "run" and c.api_key_id == key.api_key_id
        ]
        run_limit = _strictest(run_limits)
        subject = f"run '{req.run_id}'"
        if req.run_budget_micros is not None:
            # The header can only lower the key's run cap, never raise it.
            header = min(max(req.run_budget_micros, 0), MAX_EXACT)
            if run_limit is None or header < run_limit:
                # A refusal quotes this limit: say it is the header's, not the Caps page's.
                subject += (
                    ", set by X-BudgetLLM-Run-Budget-USD"
                    if run_limit is None
                    else f", lowered from {usd(run_limit)} by X-BudgetLLM-Run-Budget-USD"
                )
                run_limit = header
        counters += (
            CounterSpec(
                key=run_counter_key(api_key_id=key.api_key_id, run_id=req.run_id),
                limit_micros=run_limit,
                expires_at=now + retention,
            ),
        )
        infos += (CounterInfo("run", RUN, subject, None),)

    embeddings = req.endpoint == "embeddings"
    _, _, rate_out = price.rates_for(input_tokens=max(req.input_tokens_bound, 0))
    rate_in = price.worst_input_rate_for(input_tokens=max(req.input_tokens_bound, 0))
    # Worst case: every input token uncached (or written to the cache, where that costs
    # more), every choice as long as allowed.
    fixed = max(req.input_tokens_bound, 0) * rate_in
    per = 0 if embeddings else rate_out * max(req.choices, 1)
    if embeddings:
        ceiling = 0
    elif req.requested_output_tokens is not None:
        ceiling = max(req.requested_output_tokens, 0)
    else:
        ceiling = price.max_output_tokens
    if fixed > MAX_EXACT:
        raise RequestTooLarge()
    if per and fixed + ceiling * per > MAX_EXACT:
        ceiling = (MAX_EXACT - fixed) // per
    quote = Quote(
        fixed_mm=fixed,
        per_output_mm=per,
        ceiling_tokens=ceiling,
        min_tokens=0 if embeddings else min(max(req.min_output_tokens, 0), ceiling),
    )
    return Plan(counters, infos, quote, price, embeddings, base.batch)


class RequestTooLarge(Refused):
    http_status = 400
    code = "request_too_large"

    def __init__(self) -> None:
        super().__init__("The request is too large to price against your caps.")


def _meta(req: AdmitRequest, reservation_id: str, *, now: dt.datetime) -> dict[str, Any]:
    """The UsageRecord written if this reservation expires unsettled."""
    return {
        "request_id": reservation_id,
        "account_id": req.key.account_id,
        "api_key_id": req.key.api_key_id,
        "endpoint": req.endpoint,
        "model": req.model,
        "run_id": req.run_id,
        "input_tokens": max(req.input_tokens_bound, 0),
        "cached_tokens": 0,
        "output_tokens": 0,
        "choices": max(req.choices, 1),
        "saved_micros": 0,
        "cache_status": "MISS",
        # 0: the response was never seen (the worker died); charged in full.
        "http_status": 0,
        "latency_ms": 0,
        "created_at": now.isoformat(),
    }


def _result(
    req: AdmitRequest, plan: Plan, outcome: ReserveOutcome, rid: str, now: dt.datetime
) -> Admission:
    if not outcome.ok:
        assert outcome.tightest is not None  # noqa: S101 - a refusal names its counter
        info = plan.infos[outcome.tightest]
        spec = plan.counters[outcome.tightest]
        raise BudgetExceeded(
            scope=info.scope,
            period=info.period,
            limit_micros=spec.limit_micros or 0,
            spent_micros=outcome.spent_micros,
            reserved_micros=outcome.reserved_micros,
            resets_at=info.resets_at,
            subject=info.subject,
            needed_micros=plan.quote.amount_micros(plan.quote.min_tokens),
        )
    requested = req.requested_output_tokens
    clamped = not plan.embeddings and (requested is None or outcome.output_tokens < requested)
    return Admission(
        reservation_id=rid,
        reserved_micros=outcome.amount_micros,
        price=plan.price,
        output_tokens_allowed=outcome.output_tokens,
        clamped=clamped,
        remaining_micros=outcome.remaining_micros,
        account_id=req.key.account_id,
        api_key_id=req.key.api_key_id,
        reserved_at=now,
    )


def _check_paused(req: AdmitRequest) -> None:
    if req.key.account_paused:
        raise AccountPaused()
    if req.key.key_paused:
        raise KeyPaused(req.key.api_key_name)


def _reservation_id(req: AdmitRequest) -> str:
    return str(req.request_id or uuid.uuid4())


def admit_blocking(req: AdmitRequest) -> Admission:
    """The whole admission in one synchronous step (the SQL ledger's path, and tools)."""
    _check_paused(req)
    ledger = get_ledger()
    now = timezone.now()
    rid = _reservation_id(req)
    try:
        config = load_account_config(req.key.account_id)
    except DatabaseError as exc:
        raise LedgerUnavailable("the database") from exc
    plan = plan_admission(req, config, now=now)
    try:
        outcome = ledger.reserve(
            reservation_id=rid,
            account_id=req.key.account_id,
            counters=plan.counters,
            quote=plan.quote,
            meta=_meta(req, rid, now=now),
        )
    except LedgerError as exc:
        raise LedgerUnavailable(exc.what) from exc
    return _result(req, plan, outcome, rid, now)


async def _aconfig(ledger: Ledger, account_id: int) -> AccountConfig:
    config = _cached_config(account_id)
    if config is not None:
        return config
    try:
        # Read the version BEFORE the rows: a change committed in between bumps it again,
        # so the reserve script's check catches it.
        version = await ledger.acaps_version(account_id)
    except LedgerError as exc:
        raise LedgerUnavailable(exc.what) from exc
    try:
        loaded = await sync_to_async(db_step)(load_account_config, account_id)
    except DatabaseError as exc:
        raise LedgerUnavailable("the database") from exc
    config = dataclasses.replace(loaded, version=version)
    _config_cache[account_id] = config
    return config


async def budget_admit(req: AdmitRequest) -> Admission:
    """Reserve the request's worst case against every applicable cap, all or nothing,
    clamping its output to what the tightest cap affords. Raises a `Refused` (402 / 403 /
    503) or `UnknownModel` (400)."""
    ledger = get_ledger()
    if not ledger.checks_caps_version:
        return await sync_to_async(db_step)(admit_blocking, req)
    _check_paused(req)
    rid = _reservation_id(req)
    for _attempt in range(3):
        config = await _aconfig(ledger, req.key.account_id)
        now = timezone.now()
        plan = plan_admission(req, config, now=now)
        try:
            outcome = await ledger.areserve(
                reservation_id=rid,
                account_id=req.key.account_id,
                counters=plan.counters,
                quote=plan.quote,
                meta=_meta(req, rid, now=now),
                caps_version=config.version,
                batch=plan.batch,
            )
        except StaleCaps:
            _config_cache.pop(req.key.account_id, None)
            continue
        except LedgerError as exc:
            raise LedgerUnavailable(exc.what) from exc
        return _result(req, plan, outcome, rid, now)
    raise LedgerUnavailable("the caps kept changing during admission; retry")


async def budget_remaining(req: AdmitRequest) -> int | None:
    """What the tightest cap that would apply to `req` has left (None: no cap applies),
    reserving nothing: for a cache hit, which spends nothing and is answered whatever
    the caps say, but carries X-BudgetLLM-Remaining-USD like every other answer. Read
    against the caps as they are now (a cap changed a moment ago counts), as a reserve
    is. Raises `UnknownModel` (the model lost its price since) or `LedgerUnavailable`."""
    ledger = get_ledger()
    if not ledger.checks_caps_version:
        return await sync_to_async(db_step)(_remaining_blocking, req)
    for _attempt in range(3):
        config = await _aconfig(ledger, req.key.account_id)
        capped = _capped_counters(req, config)
        if not capped:
            return None
        try:
            states = await ledger.aread_counters(
                [c.key for c in capped],
                account_id=req.key.account_id,
                caps_version=config.version,
            )
        except StaleCaps:
            _config_cache.pop(req.key.account_id, None)
            continue
        except LedgerError as exc:
            raise LedgerUnavailable(exc.what) from exc
        return _least_left(capped, states)
    raise LedgerUnavailable("the caps kept changing while they were read; retry")


def _remaining_blocking(req: AdmitRequest) -> int | None:
    """`budget_remaining` in one synchronous step (the SQL ledger's path)."""
    try:
        config = load_account_config(req.key.account_id)
        capped = _capped_counters(req, config)
        states = get_ledger().read_counters([c.key for c in capped]) if capped else {}
    except DatabaseError as exc:
        raise LedgerUnavailable("the database") from exc
    except LedgerError as exc:
        raise LedgerUnavailable(exc.what) from exc
    return _least_left(capped, states) if capped else None


def _capped_counters(req: AdmitRequest, config: AccountConfig) -> list[CounterSpec]:
    plan = plan_admission(req, config, now=timezone.now())
    return [c for c in plan.counters if c.limit_micros is not None]


def _least_left(capped: list[CounterSpec], states: dict[str, CounterState]) -> int:
    left = []
    for c in capped:
        state = states.get(c.key, CounterState())
        left.append(max(0, (c.limit_micros or 0) - state.spent_micros - state.reserved_micros))
    return min(left)


# --- Settling and recording ----------------------------------------------------------------


def _record(
    *, account_id: int, api_key_id: int | None, usage: UsageData, at: dt.datetime | None = None
) -> dict[str, Any]:
    return {
        "request_id": str(usage.request_id),
        "account_id": account_id,
        "api_key_id": api_key_id,
        "endpoint": usage.endpoint,
        "model": usage.model,
        "run_id": usage.run_id,
        "input_tokens": usage.input_tokens,
        "cached_tokens": usage.cached_tokens,
        "output_tokens": usage.output_tokens,
        "cost_micros": usage.cost_micros,
        "saved_micros": usage.saved_micros,
        "cache_status": usage.cache_status,
        "http_status": usage.http_status,
        "latency_ms": usage.latency_ms,
        "created_at": (at or timezone.now()).isoformat(),
    }


async def budget_settle(*, admission: Admission, usage: UsageData) -> None:
    """Charge the actual cost (even above the reservation: over-count, never under),
    release the rest and record the usage, in one ledger step. Idempotent."""
    if usage.cost_micros > admission.reserved_micros:
        # The cap rests on the reservation being an upper bound: a cost above it means a
        # bound under-counted somewhere, and a cap may have been passed. Say so loudly.
        logger.error(
            "settle above reservation: request %s model %s cost %d > reserved %d micros",
            usage.request_id,
            usage.model,
            usage.cost_micros,
            admission.reserved_micros,
        )
    record = _record(
        account_id=admission.account_id,
        api_key_id=admission.api_key_id,
        usage=usage,
        at=admission.reserved_at,
    )
    try:
        await get_ledger().asettle(
            reservation_id=admission.reservation_id, cost_micros=usage.cost_micros, record=record
        )
    except LedgerError as exc:
        # The reservation stays and the sweep charges it in full once the store is back.
        raise LedgerUnavailable(exc.what) from exc


async def budget_release(*, admission: Admission, usage: UsageData | None = None) -> None:
    """The provider refused or failed without charging: release the reservation (and
    record the request if `usage` is given). A usage that reports a cost is charged."""
    record = (
        _record(
            account_id=admission.account_id,
            api_key_id=admission.api_key_id,
            usage=usage,
            at=admission.reserved_at,
        )
        if usage is not None
        else None
    )
    try:
        await get_ledger().asettle(
            reservation_id=admission.reservation_id,
            cost_micros=usage.cost_micros if usage is not None else 0,
            record=record,
        )
    except LedgerError as exc:
        raise LedgerUnavailable(exc.what) from exc


async def budget_keep_reserved(*, admission: Admission) -> None:
    """The request behind `admission` is still running: keep its reservation from being
    swept as if its worker had died. Errors are the caller's to log; if the store stays
    down the reservation expires and is charged in full, as for a crash."""
    try:
        await get_ledger().aextend(reservation_id=admission.reservation_id)
    except LedgerError as exc:
        raise LedgerUnavailable(exc.what) from exc


def _cache_hit_record(key: ResolvedKeyLike, usage: UsageData) -> dict[str, Any]:
    # A hit spends nothing: cost 0 whatever the caller passed; saved = the original cost.
    return {
        **_record(account_id=key.account_id, api_key_id=key.api_key_id, usage=usage),
        "cost_micros": 0,
        "cache_status": "HIT",
    }


def record_cache_hit(*, key: ResolvedKeyLike, usage: UsageData) -> None:
    """A cache hit: no reservation, cost 0, saved = the original cost. Not blocked by caps."""
    try:
        get_ledger().record_usage(_cache_hit_record(key, usage))
    except LedgerError as exc:
        raise LedgerUnavailable(exc.what) from exc


async def arecord_cache_hit(*, key: ResolvedKeyLike, usage: UsageData) -> None:
    try:
        await get_ledger().arecord_usage(_cache_hit_record(key, usage))
    except LedgerError as exc:
        raise LedgerUnavailable(exc.what) from exc


# --- Periodic work (called by budgets.tasks) -----------------------------------------------


def reservations_sweep(*, now: dt.datetime | None = None) -> int:
    """Charge reservations whose worker died at their full reserved amount."""
    return get_ledger().sweep_expired(now=now)


def usage_drain() -> int:
    return get_ledger().drain_usage()


# --- The dashboard's view of caps ------------------------------------------------------------


def cap_status(*, account: Any, now: dt.datetime | None = None) -> list[CapStatus]:
    """Every cap of the account with its current window's spent / reserved / resets_at.
    Run caps are per run: they show the limit only (spent 0, no window)."""
    now = now or timezone.now()
    config = load_account_config(account.id)
    tz_name = account.timezone
    planned: list[tuple[CapRow, str | None, Window | None, int | None]] = []
    for cap in config.caps:
        if cap.scope == "run" or cap.period == RUN:
            planned.append((cap, None, None, None))
            continue
        window = window_for(period=cap.period, now=now, tz_name=tz_name)
        key = counter_key(
            scope=cap.scope,
            period=cap.period,
            label=window.label,
            account_id=account.id,
            api_key_id=cap.api_key_id,
            model=cap.model,
        )
        effective, _ = _limit(
            config, scope=cap.scope, period=cap.period, api_key_id=cap.api_key_id, model=cap.model
        )
        planned.append((cap, key, window, effective))
    states = get_ledger().read_counters([k for _, k, _, _ in planned if k])
    out = []
    for cap, counter, cap_window, effective in planned:
        state = states.get(counter, CounterState()) if counter else CounterState()
        refused = state.refused_limit_micros is not None and state.refused_limit_micros == effective
        capped = counter is not None and (
            state.spent_micros + state.reserved_micros >= cap.limit_micros or refused
        )
        out.append(
            CapStatus(
                cap_id=cap.id,
                cap_public_id=cap.public_id,
                scope=cap.scope,
                period=cap.period,
                api_key_id=cap.api_key_id,
                model=cap.model,
                limit_micros=cap.limit_micros,
                spent_micros=state.spent_micros,
                reserved_micros=state.reserved_micros,
                window_start=cap_window.start if cap_window else None,
                resets_at=cap_window.resets_at if cap_window else None,
                capped=capped,
            )
        )
    return out


@dataclass(frozen=True)
class PlanLimitStatus:
    """The plan's monthly spend limit where it, not a cap, is the account's monthly limit."""

    plan: str
    limit_micros: int
    spent_micros: int
    reserved_micros: int
    resets_at: dt.datetime | None
    capped: bool


def plan_limit_status(*, account: Any, now: dt.datetime | None = None) -> PlanLimitStatus | None:
    """The plan's limit on monthly spend (the Free plan's $100) when no account cap of the
    month is stricter: it refuses requests like a cap, so the dashboard must say so too,
    though no Cap row shows it. None when the plan has no limit or a cap is stricter."""
    now = now or timezone.now()
    config = load_account_config(account.id)
    limit, note = _limit(config, scope="account", period=MONTH, api_key_id=None, model="")
    if limit is None or not note:
        return None
    window = window_for(period=MONTH, now=now, tz_name=account.timezone)
    key = counter_key(
        scope="account",
        period=MONTH,
        label=window.label,
        account_id=account.id,
        api_key_id=None,
        model="",
    )
    state = get_ledger().read_counters([key]).get(key, CounterState())
    return PlanLimitStatus(
        plan=config.plan,
        limit_micros=limit,
        spent_micros=state.spent_micros,
        reserved_micros=state.reserved_micros,
        resets_at=window.resets_at,
        capped=state.spent_micros + state.reserved_micros >= limit
        or state.refused_limit_micros == limit,
    )


def capped_keys(*, account: Any, now: dt.datetime | None = None) -> dict[int, dt.datetime | None]:
    """Keys auto-paused by a reached key cap, with when they serve again by themselves
    (the latest reset among their reached caps). Derived from the counters: nothing is
    stored, and the next window's counter starts fresh."""
    out: dict[int, dt.datetime | None] = {}
    for status in cap_status(account=account, now=now):
        if status.scope != "key" or not status.capped or status.api_key_id is None:
            continue
        prev = out.get(status.api_key_id)
        if prev is None or (status.resets_at and status.resets_at > prev):
            out[status.api_key_id] = status.resets_at
    return out


def key_is_capped(*, account: Any, api_key_id: int, now: dt.datetime | None = None) -> bool:
    return api_key_id in capped_keys(account=account, now=now)
