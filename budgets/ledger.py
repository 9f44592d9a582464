"""The spend ledger: reserve worst-case spend against several counters at once, all or
nothing, then settle to the actual cost.

One interface, two implementations proved by the same contract tests
(tests/budgets/test_ledger_contract.py):

- `RedisLedger` (production): each operation is ONE Lua script, so the check against
  every cap and the increments are a single atomic step in Redis. The usage record is
  appended to a Redis list in the same script as the settle; a Celery task drains that
  list into `UsageRecord` rows.
- `SqlLedger` (embedded default, fallback): one transaction per operation; each capped
  counter is incremented with a conditional `UPDATE … WHERE spent + reserved + X <= limit`
  and the transaction rolls back if any counter refuses. The usage record is written in
  the settle's transaction.

Amounts: integer micro-dollars. The clamp arithmetic works in micro-micro-dollars
("mm", 1e-12 USD) so prices per million tokens stay exact integers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.models import F
from django.utils import timezone

from .pricing import TOKENS_PER_MTOK, ceil_div
from .resp import pack_args

logger = logging.getLogger(__name__)

# The Lua clamp compares integers held in doubles: exact below 2**53.
MAX_EXACT = 2**53 - 1
# UsageRecord's token and latency columns are PositiveIntegerField: an integer on
# PostgreSQL. An input bound can pass it (45,000 images at gpt-4o-mini's 48,169 tokens
# each, in a 1 MB body), and one such row made the whole batch fail on every try.
MAX_DB_INT = 2**31 - 1
MAX_DB_SMALLINT = 2**15 - 1


def _db_int(value: Any, ceiling: int = MAX_DB_INT) -> int:
    return min(max(int(value), 0), ceiling)


class LedgerError(Exception):
    """The ledger's store is unreachable or failed; `what` names it for the 503."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class StaleCaps(Exception):
    """The caller's cached caps are older than the account's caps version (Redis only)."""


@dataclass(frozen=True)
class CounterSpec:
    key: str  # includes the window: "account:7:month:2026-11"
    limit_micros: int | None  # None: tracked, but no cap applies
    window_start: dt.datetime | None = None
    # When Redis may forget the counter (well after its window ended); None = never.
    expires_at: dt.datetime | None = None


@dataclass(eq=False)
class CounterBatch:
    """Counters a caller reuses for many reservations (one key and model, until the day
    rolls over). Passed to `reserve` with counters that begin with `specs`, it lets a
    ledger keep its own encoding of them in `wire` instead of rebuilding it per request."""

    specs: tuple[CounterSpec, ...]
    wire: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Quote:
    """What a request costs as a function of its output tokens n:
    cost_mm(n) = fixed_mm + n * per_output_mm, in micro-micro-dollars; cost in micros is
    that divided by 1e6, rounded up."""

    fixed_mm: int
    per_output_mm: int
    ceiling_tokens: int  # the most output tokens to reserve for
    min_tokens: int  # refuse if fewer than this fit

    def amount_micros(self, tokens: int) -> int:
        return ceil_div(self.fixed_mm + tokens * self.per_output_mm, TOKENS_PER_MTOK)

    def affordable_tokens(self, remaining_micros: int) -> int:
        """The most output tokens (≤ ceiling) whose cost fits; -1 if not even zero."""
        budget_mm = remaining_micros * TOKENS_PER_MTOK
        if budget_mm < self.fixed_mm:
            return -1
        if self.per_output_mm == 0:
            return self.ceiling_tokens
        return min(self.ceiling_tokens, (budget_mm - self.fixed_mm) // self.per_output_mm)


@dataclass(frozen=True)
class CounterState:
    spent_micros: int = 0
    reserved_micros: int = 0
    refused_limit_micros: int | None = None


@dataclass(frozen=True)
class ReserveOutcome:
    ok: bool
    output_tokens: int = 0
    amount_micros: int = 0
    # Index (into the counters given) of the tightest capped counter: on refusal, the one
    # that refused. None when no counter has a limit.
    tightest: int | None = None
    # On success: the tightest counter's remaining after this reservation.
    remaining_micros: int | None = None
    # On refusal: the refusing counter's state as the ledger saw it.
    spent_micros: int = 0
    reserved_micros: int = 0


def db_step[T](fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one blocking database step of the proxy (in `sync_to_async`'s thread).

    No request_started / request_finished signal runs on /v1, so nothing else drops a
    connection the database ended (a restart, an idle timeout on the way): every later
    step in this thread would fail on it, and the proxy would answer 503 until restarted.
    After a failed step, a connection that is no longer usable is closed, so the next step
    opens a new one."""
    try:
        return fn(*args, **kwargs)
    except Exception:
        for conn in connections.all(initialized_only=True):
            if conn.errors_occurred and not conn.in_atomic_block and not conn.is_usable():
                conn.close()
        raise


@dataclass
class Ledger:
    """Interface. `meta` is the UsageRecord template written if the reservation expires."""

    name: ClassVar[str] = "abstract"
    # True when reserve can check a caps version atomically (callers may cache caps).
    checks_caps_version: ClassVar[bool] = False
    # True when a settle whose `asettle` has started (up to its first wait) is, in the
    # normal case, applied before what reaches the ledger after it: the proxy may then
    # send the answer while the settle's reply is on its way back. Best effort: no cap
    # rests on it (a request that overtakes a settle meets the held reservation).
    settles_in_order: ClassVar[bool] = False
    reservation_ttl_seconds: int = 600
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # --- sync API
    def reserve(
        self,
        *,
        reservation_id: str,
        account_id: int,
        counters: Sequence[CounterSpec],
        quote: Quote,
        meta: dict[str, Any],
        caps_version: str | None = None,
        batch: CounterBatch | None = None,
    ) -> ReserveOutcome:
        """`batch`, if given, holds the first counters of `counters` (an encoding hint)."""
        raise NotImplementedError

    def settle(
        self, *, reservation_id: str, cost_micros: int, record: dict[str, Any] | None
    ) -> bool:
        """Charge `cost_micros` (even above the reservation: over-count, never under),
        release the rest, write `record` with that cost. False if already settled."""
        raise NotImplementedError

    def release(self, *, reservation_id: str, record: dict[str, Any] | None = None) -> bool:
        return self.settle(reservation_id=reservation_id, cost_micros=0, record=record)

    def sweep_expired(self, *, now: dt.datetime | None = None, limit: int = 500) -> int:
        """Settle reservations past their deadline at their FULL reserved amount."""
        raise NotImplementedError

    def extend(self, *, reservation_id: str) -> bool:
        """Push an unsettled reservation's deadline to a full TTL from now: its request is
        still running (a long stream), its worker alive. False if already settled/swept."""
        raise NotImplementedError

    def read_counters(self, keys: Sequence[str]) -> dict[str, CounterState]:
        raise NotImplementedError

    def record_usage(self, record: dict[str, Any]) -> None:
        """Record usage that has no reservation (a cache hit)."""
        raise NotImplementedError

    def drain_usage(self, *, limit: int = 1000) -> int:
        """Move buffered usage into UsageRecord; returns rows handled."""
        return 0

    def caps_version(self, account_id: int) -> str | None:
        return None

    def bump_caps_version(self, account_id: int) -> None:
        return None

    # --- async API (the proxy's hot path). The SQL ledger hops to a thread once per call.
    async def areserve(
        self,
        *,
        reservation_id: str,
        account_id: int,
        counters: Sequence[CounterSpec],
        quote: Quote,
        meta: dict[str, Any],
        caps_version: str | None = None,
        batch: CounterBatch | None = None,
    ) -> ReserveOutcome:
        return await sync_to_async(
            lambda: db_step(
                self.reserve,
                reservation_id=reservation_id,
                account_id=account_id,
                counters=counters,
                quote=quote,
                meta=meta,
                caps_version=caps_version,
                batch=batch,
            )
        )()

    async def asettle(
        self, *, reservation_id: str, cost_micros: int, record: dict[str, Any] | None
    ) -> bool:
        return await sync_to_async(db_step)(
            self.settle, reservation_id=reservation_id, cost_micros=cost_micros, record=record
        )

    async def arecord_usage(self, record: dict[str, Any]) -> None:
        await sync_to_async(db_step)(self.record_usage, record)

    async def aextend(self, *, reservation_id: str) -> bool:
        return await sync_to_async(db_step)(self.extend, reservation_id=reservation_id)

    async def acaps_version(self, account_id: int) -> str | None:
        return None

    async def aread_counters(
        self,
        keys: Sequence[str],
        *,
        account_id: int | None = None,
        caps_version: str | None = None,
    ) -> dict[str, CounterState]:
        """The counters; with `caps_version`, raises StaleCaps if the account's caps have
        changed since that version was read (as a reserve does)."""
        return await sync_to_async(db_step)(self.read_counters, keys)


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)!r}")


def dumps(record: dict[str, Any]) -> bytes:
    """Compact JSON for Redis (reservation meta, usage records) — orjson: this runs twice
    per proxied request, where the standard library's encoder cost ~20 µs a call."""
    return orjson.dumps(record, default=_json_default)


def _usage_rows(records: Sequence[dict[str, Any]]) -> list[Any]:
    """UsageRecord instances for buffered payloads, dropping what can no longer be stored
    (account deleted) and unlinking keys deleted meanwhile (FK is SET_NULL)."""
    from accounts.models import Account
    from keys.models import ApiKey

    from .models import UsageRecord

    account_ids = {int(r["account_id"]) for r in records}
    key_ids = {int(r["api_key_id"]) for r in records if r.get("api_key_id")}
    live_accounts = set(Account.objects.filter(id__in=account_ids).values_list("id", flat=True))
    live_keys = set(ApiKey.objects.filter(id__in=key_ids).values_list("id", flat=True))
    rows = []
    for r in records:
        if int(r["account_id"]) not in live_accounts:
            continue
        created = r.get("created_at")
        rows.append(
            UsageRecord(
                request_id=uuid.UUID(str(r["request_id"])),
                account_id=int(r["account_id"]),
                api_key_id=int(r["api_key_id"])
                if r.get("api_key_id") and int(r["api_key_id"]) in live_keys
                else None,
                endpoint=str(r.get("endpoint", ""))[:32],
                model=str(r.get("model", ""))[:100],
                run_id=str(r.get("run_id", ""))[:128],
                # Held to the columns' range (the cost, a bigint, stays exact): a count
                # past it is an upper bound that the ledger charged, not a real count.
                input_tokens=_db_int(r.get("input_tokens", 0)),
                cached_tokens=_db_int(r.get("cached_tokens", 0)),
                output_tokens=_db_int(r.get("output_tokens", 0)),
                cost_micros=int(r.get("cost_micros", 0)),
                saved_micros=int(r.get("saved_micros", 0)),
                cache_status=str(r.get("cache_status", "MISS")),
                http_status=_db_int(r.get("http_status", 0), MAX_DB_SMALLINT),
                latency_ms=_db_int(r.get("latency_ms", 0)),
                created_at=dt.datetime.fromisoformat(created) if created else timezone.now(),
            )
        )
    return rows


def write_usage_records(records: Sequence[dict[str, Any]]) -> int:
    from .models import UsageRecord

    rows = _usage_rows(records)
    # request_id is unique: a record delivered twice (a drain retried after a crash)
    # is stored once.
    UsageRecord.objects.bulk_create(rows, ignore_conflicts=True)
    charged = sorted({row.account_id for row in rows if row.cost_micros > 0})
    if charged:
        # Thresholds and the spend-spike breaker look at spend after it is recorded
        # (after commit, so the evaluation sees these rows); `alerts_check` only queues
        # a debounced Celery task and never raises.
        from .alerts import alerts_check_many

        transaction.on_commit(lambda: alerts_check_many(account_ids=charged))
    return len(rows)


# --- SQL ----------------------------------------------------------------------------------


class _Refusal(Exception):
    def __init__(self, outcome: ReserveOutcome, key: str, limit: int) -> None:
        self.outcome = outcome
        self.key = key
        self.limit = limit


class _Race(Exception):
    """A conditional UPDATE matched no row although the read said it fits."""


@dataclass
class SqlLedger(Ledger):
    name: ClassVar[str] = "sql"
    retries: int = 5

    def reserve(
        self,
        *,
        reservation_id: str,
        account_id: int,
        counters: Sequence[CounterSpec],
        quote: Quote,
        meta: dict[str, Any],
        caps_version: str | None = None,
        batch: CounterBatch | None = None,
    ) -> ReserveOutcome:
        try:
            for _ in range(self.retries):
                try:
                    return self._reserve_once(reservation_id, account_id, counters, quote, meta)
                except _Race:
                    continue
                except _Refusal as refusal:
                    self._mark_refused(account_id, refusal.key, refusal.limit)
                    return refusal.outcome
        except DatabaseError as exc:
            raise LedgerError("the database") from exc
        raise LedgerError("the database (reservation kept conflicting; retry)")

    def _reserve_once(
        self,
        reservation_id: str,
        account_id: int,
        counters: Sequence[CounterSpec],
        quote: Quote,
        meta: dict[str, Any],
    ) -> ReserveOutcome:
        from .models import Reservation, SpendCounter

        now = timezone.now()
        keys = [c.key for c in counters]
        with transaction.atomic():
            # Every lock in key order (the inserts of new rows too), so two reservations
            # sharing counters cannot deadlock.
            SpendCounter.objects.bulk_create(
                [
                    SpendCounter(account_id=account_id, key=c.key, window_start=c.window_start)
                    for c in sorted(counters, key=lambda c: c.key)
                ],
                ignore_conflicts=True,
            )
            # (SQLite ignores FOR UPDATE; its IMMEDIATE transaction already serialises.)
            state = {
                row.key: row
                for row in SpendCounter.objects.select_for_update()
                .filter(key__in=keys)
                .order_by("key")
            }
            tightest: int | None = None
            tight_rem = 0
            for i, c in enumerate(counters):
                if c.limit_micros is None:
                    continue
                row = state[c.key]
                rem = c.limit_micros - row.spent_micros - row.reserved_micros
                if tightest is None or rem < tight_rem:
                    tightest, tight_rem = i, rem
            tokens = quote.ceiling_tokens
            if tightest is not None:
                tokens = quote.affordable_tokens(tight_rem)
                if tokens < quote.min_tokens:
                    c = counters[tightest]
                    row = state[c.key]
                    assert c.limit_micros is not None  # noqa: S101 - tightest has a limit
                    raise _Refusal(
                        ReserveOutcome(
                            ok=False,
                            tightest=tightest,
                            spent_micros=row.spent_micros,
                            reserved_micros=row.reserved_micros,
                        ),
                        c.key,
                        c.limit_micros,
                    )
            amount = quote.amount_micros(tokens)
            unlimited = [c.key for c in counters if c.limit_micros is None]
            for c in counters:
                if c.limit_micros is None:
                    continue
                # The check and the increment are one statement: even if the read above
                # were stale, this UPDATE cannot take the counter past its limit.
                updated = SpendCounter.objects.filter(
                    key=c.key,
                    spent_micros__lte=c.limit_micros - amount - F("reserved_micros"),
                ).update(reserved_micros=F("reserved_micros") + amount, updated_at=now)
                if updated != 1:
                    raise _Race
            if unlimited:
                SpendCounter.objects.filter(key__in=unlimited).update(
                    reserved_micros=F("reserved_micros") + amount, updated_at=now
                )
            Reservation.objects.create(
                reservation_id=reservation_id,
                account_id=account_id,
                counter_keys=keys,
                amount_micros=amount,
                output_tokens=tokens,
                meta={**meta, "output_tokens": tokens * int(meta.get("choices", 1))},
                created_at=now,
                deadline=now + dt.timedelta(seconds=self.reservation_ttl_seconds),
            )
        return ReserveOutcome(
            ok=True,
            output_tokens=tokens,
            amount_micros=amount,
            tightest=tightest,
            remaining_micros=None if tightest is None else tight_rem - amount,
        )

    def _mark_refused(self, account_id: int, key: str, limit: int) -> None:
        from .models import SpendCounter

        # The refusal rolled the reserve back, possibly with the counter's first row.
        with transaction.atomic():
            SpendCounter.objects.bulk_create(
                [SpendCounter(account_id=account_id, key=key)], ignore_conflicts=True
            )
            SpendCounter.objects.filter(key=key).update(refused_limit_micros=limit)

    def settle(
        self, *, reservation_id: str, cost_micros: int, record: dict[str, Any] | None
    ) -> bool:
        try:
            return self._settle(reservation_id, cost_micros, record, full=False)
        except DatabaseError as exc:
            raise LedgerError("the database") from exc

    def _settle(
        self, reservation_id: str, cost_micros: int, record: dict[str, Any] | None, *, full: bool
    ) -> bool:
        from .models import Reservation, SpendCounter

        now = timezone.now()
        with transaction.atomic():
            res = (
                Reservation.objects.select_for_update()
                .filter(reservation_id=reservation_id)
                .first()
            )
            if res is None:
                logger.warning("settle of unknown reservation %s", reservation_id)
                if record is not None:
                    write_usage_records([{**record, "cost_micros": cost_micros}])
                return False
            if res.settled_at is not None:
                return False
            charged = res.amount_micros if full else max(cost_micros, 0)
            # Lock in key order, as reserve does (deadlock freedom).
            list(
                SpendCounter.objects.select_for_update()
                .filter(key__in=res.counter_keys)
                .order_by("key")
                .values_list("id", flat=True)
            )
            SpendCounter.objects.filter(key__in=res.counter_keys).update(
                reserved_micros=F("reserved_micros") - res.amount_micros,
                spent_micros=F("spent_micros") + charged,
                updated_at=now,
            )
            res.settled_at = now
            res.charged_micros = charged
            res.save(update_fields=["settled_at", "charged_micros"])
            if full:
                record = {**res.meta, "created_at": res.created_at.isoformat()}
            if record is not None:
                # Recorded with exactly what the counters were charged, in the same
                # transaction: the ledger's settled total equals the sum of records.
                write_usage_records([{**record, "cost_micros": charged}])
        return True

    def sweep_expired(self, *, now: dt.datetime | None = None, limit: int = 500) -> int:
        from .models import Reservation

        now = now or timezone.now()
        ids = list(
            Reservation.objects.filter(settled_at__isnull=True, deadline__lte=now)
            .order_by("deadline")
            .values_list("reservation_id", flat=True)[:limit]
        )
        done = 0
        for rid in ids:
            try:
                done += self._settle(rid, 0, None, full=True)
            except DatabaseError:
                # Logged and skipped, not raised: the ids come oldest first, so one
                # reservation that cannot be settled would otherwise stop every sweep
                # before the ones after it, and leave them held against the caps.
                logger.exception("sweep of reservation %s failed", rid)
        return done

    def extend(self, *, reservation_id: str) -> bool:
        from .models import Reservation

        deadline = timezone.now() + dt.timedelta(seconds=self.reservation_ttl_seconds)
        try:
            return bool(
                Reservation.objects.filter(
                    reservation_id=reservation_id, settled_at__isnull=True
                ).update(deadline=deadline)
            )
        except DatabaseError as exc:
            raise LedgerError("the database") from exc

    def read_counters(self, keys: Sequence[str]) -> dict[str, CounterState]:
        from .models import SpendCounter

        try:
            return {
                row.key: CounterState(
                    row.spent_micros, row.reserved_micros, row.refused_limit_micros
                )
                for row in SpendCounter.objects.filter(key__in=list(keys))
            }
        except DatabaseError as exc:
            raise LedgerError("the database") from exc

    def record_usage(self, record: dict[str, Any]) -> None:
        try:
            write_usage_records([record])
        except DatabaseError as exc:
            raise LedgerError("the database") from exc


# --- Redis --------------------------------------------------------------------------------

# KEYS: 1 deadlines zset, 2 reservation hash, 3 settled marker, 4 caps version, 5.. counters
# ARGV: 1 expected caps version ('' = no check), 2 fixed_mm, 3 per_output_mm, 4 ceiling,
#       5 min tokens, 6 deadline (unix s), 7 meta json, 8 reservation id, 9 full amount at
#       ceiling (micros), then per counter: limit (-1 = none), expire-at unix s (0 = none)
RESERVE_LUA = r"""
if ARGV[1] ~= '' then
  local v = redis.call('GET', KEYS[4]) or '0'
  if v ~= ARGV[1] then return {-2, v} end
end
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
  return {-3}
end
local n = #KEYS - 4
local fixed = tonumber(ARGV[2])
local per = tonumber(ARGV[3])
local ceiling = tonumber(ARGV[4])
local minout = tonumber(ARGV[5])
local full = tonumber(ARGV[9])
local tight = 0
local tight_rem, tight_s, tight_r, tight_lim
for i = 1, n do
  local lim = tonumber(ARGV[8 + 2 * i])
  if lim >= 0 then
    local vals = redis.call('HMGET', KEYS[4 + i], 's', 'r')
    local s = tonumber(vals[1] or '0')
    local r = tonumber(vals[2] or '0')
    local rem = lim - s - r
    if tight == 0 or rem < tight_rem then
      tight, tight_rem, tight_s, tight_r, tight_lim = i, rem, s, r, lim
    end
  end
end
local out = ceiling
local amount = full
if tight > 0 and tight_rem < full then
  -- Clamp: the most output tokens whose cost fits the tightest remaining. Every product
  -- here is an integer below 2^53 (the caller guarantees fixed + ceiling*per is), so
  -- doubles hold them exactly; the loops correct any rounding of the division.
  local budget = tight_rem * 1000000
  if budget < fixed then
    out = -1
  elseif per == 0 then
    out = ceiling
  else
    out = math.floor((budget - fixed) / per)
    if out > ceiling then out = ceiling end
    while out >= 0 and fixed + out * per > budget do out = out - 1 end
    while out < ceiling and fixed + (out + 1) * per <= budget do out = out + 1 end
  end
  if out < minout then
    redis.call('HSET', KEYS[4 + tight], 'x', tight_lim)
    -- The mark may be the counter's first write (a new run id, a fresh day): it must
    -- expire like the counter would, or each such refusal leaves a hash for good.
    local texp = tonumber(ARGV[9 + 2 * tight])
    if texp > 0 then redis.call('EXPIREAT', KEYS[4 + tight], texp) end
    return {-1, tight, tight_s, tight_r}
  end
  local mm = fixed + out * per
  amount = math.floor(mm / 1000000)
  while amount * 1000000 < mm do amount = amount + 1 end
  while amount > 0 and (amount - 1) * 1000000 >= mm do amount = amount - 1 end
end
local names = {}
for i = 1, n do
  redis.call('HINCRBY', KEYS[4 + i], 'r', amount)
  local exp = tonumber(ARGV[9 + 2 * i])
  if exp > 0 then redis.call('EXPIREAT', KEYS[4 + i], exp) end
  names[i] = KEYS[4 + i]
end
redis.call('HSET', KEYS[2], 'a', amount, 'o', out, 'k', table.concat(names, '\n'),
  'm', ARGV[7], 'd', ARGV[6])
redis.call('ZADD', KEYS[1], ARGV[6], ARGV[8])
local rem = -1
if tight > 0 then rem = tight_rem - amount end
return {1, out, amount, tight, rem}
"""

# KEYS: 1 deadlines, 2 reservation hash, 3 settled marker, 4 usage list
# ARGV: 1 reservation id, 2 cost micros, 3 record json ('' = none), 4 marker ttl s
SETTLE_LUA = r"""
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local res = redis.call('HMGET', KEYS[2], 'a', 'k')
if not res[1] then
  if ARGV[3] ~= '' then redis.call('RPUSH', KEYS[4], ARGV[3]) end
  return -1
end
local amount = tonumber(res[1])
local charged = tonumber(ARGV[2])
for key in string.gmatch(res[2], '[^\n]+') do
  redis.call('HINCRBY', key, 'r', -amount)
  redis.call('HINCRBY', key, 's', charged)
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], charged, 'EX', ARGV[4])
if ARGV[3] ~= '' then redis.call('RPUSH', KEYS[4], ARGV[3]) end
return 1
"""

# KEYS: 1 deadlines, 2 usage list
# ARGV: 1 now (unix s), 2 batch size, 3 key prefix, 4 marker ttl s
SWEEP_LUA = r"""
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local done = 0
for _, id in ipairs(ids) do
  local rk = ARGV[3] .. 'r:' .. id
  local res = redis.call('HMGET', rk, 'a', 'k', 'm', 'o')
  if res[1] then
    local amount = tonumber(res[1])
    for key in string.gmatch(res[2], '[^\n]+') do
      redis.call('HINCRBY', key, 'r', -amount)
      redis.call('HINCRBY', key, 's', amount)
    end
    local meta = cjson.decode(res[3])
    meta['cost_micros'] = amount
    meta['output_tokens'] = tonumber(res[4]) * (tonumber(meta['choices']) or 1)
    redis.call('RPUSH', KEYS[2], cjson.encode(meta))
    redis.call('DEL', rk)
    redis.call('SET', ARGV[3] .. 'done:' .. id, amount, 'EX', ARGV[4])
    done = done + 1
  end
  redis.call('ZREM', KEYS[1], id)
end
return done
"""

# KEYS: 1 deadlines, 2 reservation hash. ARGV: 1 reservation id, 2 new deadline (unix s)
# Only a reservation still held moves: one already settled or swept stays gone.
EXTEND_LUA = r"""
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'd', ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
return 1
"""

# KEYS: 1 usage list, 2 drain lock. ARGV: 1 count, 2 lock token, 3 lock ttl ms.
# Drops the first `count` entries (after they are stored), only while the caller still
# holds the drain lock, and renews it. A drainer whose lock ran out (a batch slower than
# the lock) may find its entries drained by the next holder and new ones at the head:
# trimming then would drop records nobody stored.
TRIM_LUA = r"""
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('LTRIM', KEYS[1], tonumber(ARGV[1]), -1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""


# KEYS: 1 drain lock. ARGV: 1 token. Deletes the lock only if it is still the caller's
# (a GET then DEL could delete the next holder's lock, which expired in between).
UNLOCK_LUA = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


def _counter_states(keys: Sequence[str], rows: Sequence[Any]) -> dict[str, CounterState]:
    """Counters from their hashes' (s, r, x) fields, as HMGET gives them; absent ones left out."""
    out = {}
    for key, (s, r, x) in zip(keys, rows, strict=True):
        if s is None and r is None and x is None:
            continue
        out[key] = CounterState(int(s or 0), int(r or 0), int(x) if x is not None else None)
    return out


def _unix(value: dt.datetime | None) -> int:
    return int(value.timestamp()) if value else 0


@dataclass
class RedisLedger(Ledger):
    name: ClassVar[str] = "redis"
    checks_caps_version: ClassVar[bool] = True
    # On an open connection `asettle` writes its command before it first waits, and Redis
    # runs commands one at a time as they arrive (not so while reconnecting, or re-sending
    # a script Redis lost: then the answer may leave first).
    settles_in_order: ClassVar[bool] = True
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "bllm:ledger:"
    timeout_seconds: float = 2.0
    settled_memory_seconds: int = 7 * 86400
    _sync: Any = field(default=None, repr=False)
    _async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = field(
        default_factory=weakref.WeakKeyDictionary, repr=False
    )

    # --- keys
    def counter_key(self, key: str) -> str:
        return f"{self.prefix}c:{key}"

    def _res_key(self, rid: str) -> str:
        return f"{self.prefix}r:{rid}"

    def _done_key(self, rid: str) -> str:
        return f"{self.prefix}done:{rid}"

    @property
    def deadlines_key(self) -> str:
        return f"{self.prefix}deadlines"

    @property
    def usage_key(self) -> str:
        return f"{self.prefix}usage"

    def _version_key(self, account_id: int) -> str:
        return f"{self.prefix}capsver:{account_id}"

    @property
    def where(self) -> str:
        # Names what is down in the 503, without credentials.
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        return f"Redis at {parts.hostname}:{parts.port or 6379}"

    # --- clients
    def client(self) -> Any:
        import redis

        with self._lock:
            if self._sync is None:
                self._sync = redis.Redis.from_url(
                    self.url,
                    socket_timeout=self.timeout_seconds,
                    socket_connect_timeout=self.timeout_seconds,
                    decode_responses=True,
                )
                self._scripts = {
                    name: self._sync.register_script(src) for name, src in _SCRIPTS.items()
                }
        return self._sync

    def aclient(self) -> tuple[Any, dict[str, Any]]:
        """One asyncio client per event loop, created inside the running loop.

        The lean pipelined client (budgets/resp.py), not redis-py's asyncio one: reserve
        and settle are on every proxied request, and redis-py spent ~170 µs of CPU per
        round trip there against ~30 µs."""
        from .resp import LeanRedis

        loop = asyncio.get_running_loop()
        entry = self._async.get(loop)
        if entry is None:
            client = LeanRedis.from_url(
                self.url, timeout=self.timeout_seconds, decode_responses=True
            )
            scripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}
            entry = (client, scripts)
            self._async[loop] = entry
        return entry

    def _script(self, name: str) -> Any:
        self.client()
        return self._scripts[name]

    # --- reserve
    def _reserve_args(
        self,
        reservation_id: str,
        counters: Sequence[CounterSpec],
        quote: Quote,
        meta: dict[str, Any],
        caps_version: str | None,
    ) -> tuple[list[str], list[Any]]:
        self._check_exact(quote)
        deadline = timezone.now() + dt.timedelta(seconds=self.reservation_ttl_seconds)
        keys = [
            self.deadlines_key,
            self._res_key(reservation_id),
            self._done_key(reservation_id),
            self._version_key(int(meta.get("account_id", 0))),
            *[self.counter_key(c.key) for c in counters],
        ]
        args: list[Any] = [
            caps_version or "",
            quote.fixed_mm,
            quote.per_output_mm,
            quote.ceiling_tokens,
            quote.min_tokens,
            f"{deadline.timestamp():.3f}",
            dumps(meta),
            reservation_id,
            quote.amount_micros(quote.ceiling_tokens),
        ]
        for c in counters:
            args += self._counter_args(c)
        return keys, args

    @staticmethod
    def _check_exact(quote: Quote) -> None:
        if quote.fixed_mm + quote.ceiling_tokens * quote.per_output_mm > MAX_EXACT:
            raise ValueError("request too large to price exactly")

    @staticmethod
    def _counter_args(c: CounterSpec) -> list[Any]:
        return [-1 if c.limit_micros is None else c.limit_micros, _unix(c.expires_at)]

    def _packed_counters(
        self, account_id: int, counters: Sequence[CounterSpec]
    ) -> tuple[bytes, bytes]:
        """RESP of the caps-version key and the counters' keys, and of their per-counter
        arguments: the parts of a reserve that stay the same for a batch."""
        keys = pack_args(
            [self._version_key(account_id), *[self.counter_key(c.key) for c in counters]]
        )
        args = pack_args([a for c in counters for a in self._counter_args(c)])
        return keys, args

    def _reserve_body(
        self,
        reservation_id: str,
        account_id: int,
        counters: Sequence[CounterSpec],
        quote: Quote,
        meta: dict[str, Any],
        caps_version: str | None,
        batch: CounterBatch | None,
    ) -> tuple[int, bytes]:
        """The script's numkeys, KEYS and ARGV as packed RESP (what `_reserve_args` lists),
        reusing the batch's packed counters. Returns (number of elements, bytes)."""
        self._check_exact(quote)
        shared = 0
        if batch is not None:
            shared = len(batch.specs)
            wire = batch.wire.get(self.prefix)
            if wire is None:
                wire = batch.wire[self.prefix] = self._packed_counters(account_id, batch.specs)
            static_keys, static_args = wire
        else:
            static_keys, static_args = self._packed_counters(account_id, ())
        rest = counters[shared:]
        deadline = time.time() + self.reservation_ttl_seconds
        body = b"".join(
            (
                pack_args(
                    (
                        4 + len(counters),
                        self.deadlines_key,
                        self._res_key(reservation_id),
                        self._done_key(reservation_id),
                    )
                ),
                static_keys,
                pack_args([self.counter_key(c.key) for c in rest]),
                pack_args(
                    (
                        caps_version or "",
                        quote.fixed_mm,
                        quote.per_output_mm,
                        quote.ceiling_tokens,
                        quote.min_tokens,
                        f"{deadline:.3f}",
                        dumps(meta),
                        reservation_id,
                        quote.amount_micros(quote.ceiling_tokens),
                    )
                ),
                static_args,
                pack_args([a for c in rest for a in self._counter_args(c)]),
            )
        )
        return 14 + 3 * len(counters), body

    @staticmethod
    def _outcome(raw: list[Any]) -> ReserveOutcome:
        status = int(raw[0])
        if status == -2:
            raise StaleCaps(str(raw[1]))
        if status == -3:
            raise ValueError("reservation id already used")
        if status == -1:
            return ReserveOutcome(
                ok=False,
                tightest=int(raw[1]) - 1,
                spent_micros=int(raw[2]),
                reserved_micros=int(raw[3]),
            )
        tight = int(raw[3])
        return ReserveOutcome(
            ok=True,
            output_tokens=int(raw[1]),
            amount_micros=int(raw[2]),
            tightest=tight - 1 if tight > 0 else None,
            remaining_micros=int(raw[4]) if tight > 0 else None,
        )

    def reserve(
        self,
        *,
        reservation_id: str,
        account_id: int,
        counters: Sequence[CounterSpec],
        quote: Quote,
        meta: dict[str, Any],
        caps_version: str | None = None,
        batch: CounterBatch | None = None,
    ) -> ReserveOutcome:
        import redis

        keys, args = self._reserve_args(
            reservation_id, counters, quote, {**meta, "account_id": account_id}, caps_version
        )
        try:
            raw = self._script("reserve")(keys=keys, args=args)
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc
        return self._outcome(raw)

    async def areserve(
        self,
        *,
        reservation_id: str,
        account_id: int,
        counters: Sequence[CounterSpec],
        quote: Quote,
        meta: dict[str, Any],
        caps_version: str | None = None,
        batch: CounterBatch | None = None,
    ) -> ReserveOutcome:
        import redis

        if meta.get("account_id") != account_id:
            meta = {**meta, "account_id": account_id}
        count, body = self._reserve_body(
            reservation_id, account_id, counters, quote, meta, caps_version, batch
        )
        _, scripts = self.aclient()
        try:
            raw = await scripts["reserve"].call_packed(count, body)
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc
        return self._outcome(raw)

    # --- settle
    def _settle_args(
        self, rid: str, cost_micros: int, record: dict[str, Any] | None
    ) -> tuple[list[str], list[Any]]:
        charged = max(cost_micros, 0)
        payload = b""
        if record is not None:
            if record.get("cost_micros") != charged:
                record = {**record, "cost_micros": charged}
            payload = dumps(record)
        keys = [self.deadlines_key, self._res_key(rid), self._done_key(rid), self.usage_key]
        return keys, [rid, charged, payload, self.settled_memory_seconds]

    def settle(
        self, *, reservation_id: str, cost_micros: int, record: dict[str, Any] | None
    ) -> bool:
        import redis

        keys, args = self._settle_args(reservation_id, cost_micros, record)
        try:
            result = int(self._script("settle")(keys=keys, args=args))
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc
        if result < 0:
            logger.warning("settle of unknown reservation %s", reservation_id)
        return result == 1

    async def asettle(
        self, *, reservation_id: str, cost_micros: int, record: dict[str, Any] | None
    ) -> bool:
        import redis

        keys, args = self._settle_args(reservation_id, cost_micros, record)
        _, scripts = self.aclient()
        try:
            result = int(await scripts["settle"](keys=keys, args=args))
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc
        if result < 0:
            logger.warning("settle of unknown reservation %s", reservation_id)
        return result == 1

    # --- the rest
    def sweep_expired(self, *, now: dt.datetime | None = None, limit: int = 500) -> int:
        import redis

        now = now or timezone.now()
        try:
            return int(
                self._script("sweep")(
                    keys=[self.deadlines_key, self.usage_key],
                    args=[
                        f"{now.timestamp():.3f}",
                        limit,
                        self.prefix,
                        self.settled_memory_seconds,
                    ],
                )
            )
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc

    def _extend_args(self, rid: str) -> tuple[list[str], list[Any]]:
        deadline = time.time() + self.reservation_ttl_seconds
        return [self.deadlines_key, self._res_key(rid)], [rid, f"{deadline:.3f}"]

    def extend(self, *, reservation_id: str) -> bool:
        import redis

        keys, args = self._extend_args(reservation_id)
        try:
            return int(self._script("extend")(keys=keys, args=args)) == 1
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc

    async def aextend(self, *, reservation_id: str) -> bool:
        import redis

        keys, args = self._extend_args(reservation_id)
        _, scripts = self.aclient()
        try:
            return int(await scripts["extend"](keys=keys, args=args)) == 1
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc

    def read_counters(self, keys: Sequence[str]) -> dict[str, CounterState]:
        import redis

        try:
            pipe = self.client().pipeline(transaction=False)
            for key in keys:
                pipe.hmget(self.counter_key(key), "s", "r", "x")
            rows = pipe.execute()
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc
        return _counter_states(keys, rows)

    async def aread_counters(
        self,
        keys: Sequence[str],
        *,
        account_id: int | None = None,
        caps_version: str | None = None,
    ) -> dict[str, CounterState]:
        import redis

        client, _ = self.aclient()
        commands: list[tuple[Any, ...]] = [
            ("HMGET", self.counter_key(key), "s", "r", "x") for key in keys
        ]
        checked = caps_version is not None and account_id is not None
        if checked:
            commands.append(("GET", self._version_key(account_id or 0)))
        try:
            rows = await client.execute_many(commands)  # one round trip
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc
        if checked and str(rows.pop() or "0") != caps_version:
            raise StaleCaps()
        return _counter_states(keys, rows)

    def record_usage(self, record: dict[str, Any]) -> None:
        import redis

        try:
            self.client().rpush(self.usage_key, dumps(record))
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc

    async def arecord_usage(self, record: dict[str, Any]) -> None:
        import redis

        client, _ = self.aclient()
        try:
            await client.rpush(self.usage_key, dumps(record))
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc

    def drain_usage(self, *, limit: int = 1000) -> int:
        """Store buffered usage rows. One drainer at a time (a lock), and the list is only
        trimmed after the rows are committed: a crash in between re-delivers them, and
        `request_id`'s unique constraint makes that harmless."""
        import redis

        client = self.client()
        token = uuid.uuid4().hex
        lock_key = f"{self.prefix}drain-lock"
        lock_ms = 60_000
        total = 0
        try:
            if not client.set(lock_key, token, nx=True, px=lock_ms):
                return 0
            try:
                while True:
                    raw = client.lrange(self.usage_key, 0, limit - 1)
                    if not raw:
                        break
                    records = []
                    for item in raw:
                        try:
                            records.append(json.loads(item))
                        except ValueError:
                            logger.error("dropping unreadable usage payload %r", item[:200])
                    with transaction.atomic():
                        write_usage_records(records)
                    trimmed = self._script("trim")(
                        keys=[self.usage_key, lock_key], args=[len(raw), token, lock_ms]
                    )
                    if not int(trimmed):
                        # The lock ran out meanwhile: what was read is stored (again,
                        # harmlessly); the list is the new holder's to trim.
                        logger.warning("usage drain lost its lock; stopping")
                        break
                    total += len(raw)
                    if len(raw) < limit:
                        break
            finally:
                self._script("unlock")(keys=[lock_key], args=[token])
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc
        return total

    def pending_usage(self) -> int:
        return int(self.client().llen(self.usage_key))

    def caps_version(self, account_id: int) -> str | None:
        import redis

        try:
            return str(self.client().get(self._version_key(account_id)) or "0")
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc

    async def acaps_version(self, account_id: int) -> str | None:
        import redis

        client, _ = self.aclient()
        try:
            return str(await client.get(self._version_key(account_id)) or "0")
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc

    def bump_caps_version(self, account_id: int) -> None:
        import redis

        try:
            self.client().incr(self._version_key(account_id))
        except redis.RedisError as exc:
            raise LedgerError(self.where) from exc


_SCRIPTS = {
    "reserve": RESERVE_LUA,
    "settle": SETTLE_LUA,
    "sweep": SWEEP_LUA,
    "trim": TRIM_LUA,
    "extend": EXTEND_LUA,
    "unlock": UNLOCK_LUA,
}

_ledger: Ledger | None = None
_ledger_lock = threading.Lock()


def build_ledger(backend: str | None = None) -> Ledger:
    backend = backend or settings.LEDGER_BACKEND
    ttl = settings.LEDGER_RESERVATION_TTL_SECONDS
    if backend == "redis":
        return RedisLedger(
            reservation_ttl_seconds=ttl,
            url=settings.LEDGER_REDIS_URL,
            prefix=settings.LEDGER_REDIS_PREFIX,
            timeout_seconds=settings.LEDGER_REDIS_TIMEOUT_SECONDS,
        )
    if backend == "sql":
        return SqlLedger(reservation_ttl_seconds=ttl)
    raise ValueError(f"LEDGER_BACKEND must be 'redis' or 'sql', not {backend!r}")


def get_ledger() -> Ledger:
    """The process's ledger, built from settings on first use."""
    global _ledger
    if _ledger is None:
        with _ledger_lock:
            if _ledger is None:
                _ledger = build_ledger()
    return _ledger


def reset_ledger() -> None:
    """Forget the process's ledger (tests that change LEDGER_* settings)."""
    global _ledger
    with _ledger_lock:
        _ledger = None
