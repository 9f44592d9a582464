"""One contract, two ledgers: every test here runs against SqlLedger and RedisLedger."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import connections
from django.db.models import Sum

from accounts.models import Account
from budgets.ledger import CounterBatch, CounterSpec, Ledger, Quote, RedisLedger, SqlLedger
from budgets.models import Reservation, UsageRecord

from .conftest import REDIS_SKIP, REDIS_URL, build, cleanup_redis, make_api_key, redis_ledger

# 1 micro-dollar per input token and 2 per output token (in micro-micros per token).
PER_IN = 1_000_000
PER_OUT = 2_000_000


def quote(*, input_tokens: int = 100, ceiling: int = 50, minimum: int = 10) -> Quote:
    return Quote(
        fixed_mm=input_tokens * PER_IN,
        per_output_mm=PER_OUT,
        ceiling_tokens=ceiling,
        min_tokens=minimum,
    )


def record(account: Account, api_key_id: int | None, rid: str) -> dict[str, Any]:
    return {
        "request_id": rid,
        "account_id": account.id,
        "api_key_id": api_key_id,
        "endpoint": "chat.completions",
        "model": "gpt-4o-mini",
        "run_id": "",
        "input_tokens": 100,
        "cached_tokens": 0,
        "output_tokens": 20,
        "cost_micros": -1,  # the ledger writes what it charged
        "saved_micros": 0,
        "cache_status": "MISS",
        "http_status": 200,
        "latency_ms": 5,
    }


def reserve(
    ledger: Ledger,
    account: Account,
    counters: list[CounterSpec],
    q: Quote | None = None,
    rid: str | None = None,
) -> tuple[str, Any]:
    rid = rid or str(uuid.uuid4())
    outcome = ledger.reserve(
        reservation_id=rid,
        account_id=account.id,
        counters=counters,
        quote=q or quote(),
        meta={
            **record(account, None, rid),
            "http_status": 0,
            "choices": 1,
            "created_at": "2026-11-27T10:00:00+00:00",
        },
    )
    return rid, outcome


def state(ledger: Ledger, key: str) -> tuple[int, int]:
    s = ledger.read_counters([key]).get(key)
    return (s.spent_micros, s.reserved_micros) if s else (0, 0)


def recorded(ledger: Ledger) -> list[UsageRecord]:
    ledger.drain_usage()
    return list(UsageRecord.objects.order_by("id"))


@pytest.fixture
def account(db) -> Account:  # type: ignore[no-untyped-def]
    return Account.objects.create(name="acme", timezone="Asia/Kolkata")


def test_reserve_then_settle_charges_actual_and_releases_the_rest(ledger, account) -> None:  # type: ignore[no-untyped-def]
    cap = CounterSpec("account:1:day:x", limit_micros=1_000)
    rid, outcome = reserve(ledger, account, [cap])
    assert outcome.ok and outcome.output_tokens == 50
    assert outcome.amount_micros == 100 + 2 * 50
    assert outcome.remaining_micros == 1_000 - 200
    assert state(ledger, cap.key) == (0, 200)

    assert ledger.settle(reservation_id=rid, cost_micros=130, record=record(account, None, rid))
    assert state(ledger, cap.key) == (130, 0)
    [row] = recorded(ledger)
    assert str(row.request_id) == rid and row.cost_micros == 130


def test_release_frees_everything_and_charges_nothing(ledger, account) -> None:  # type: ignore[no-untyped-def]
    cap = CounterSpec("account:1:day:x", limit_micros=1_000)
    rid, _ = reserve(ledger, account, [cap])
    assert ledger.release(reservation_id=rid)
    assert state(ledger, cap.key) == (0, 0)
    assert recorded(ledger) == []


def test_reserve_is_all_or_nothing_across_counters(ledger, account) -> None:  # type: ignore[no-untyped-def]
    roomy = CounterSpec("account:1:month:x", limit_micros=10_000)
    tracked = CounterSpec("model:1:gpt:month:x", limit_micros=None)
    full = CounterSpec("key:1:day:x", limit_micros=100)  # input alone costs 100: no output fits
    _, outcome = reserve(ledger, account, [roomy, tracked, full])
    assert not outcome.ok
    assert outcome.tightest == 2
    assert state(ledger, roomy.key) == (0, 0)
    assert state(ledger, tracked.key) == (0, 0)
    assert state(ledger, full.key) == (0, 0)
    # The refusing counter remembers the limit it refused at (the key shows as capped).
    assert ledger.read_counters([full.key])[full.key].refused_limit_micros == 100


def test_settle_is_idempotent(ledger, account) -> None:  # type: ignore[no-untyped-def]
    cap = CounterSpec("account:1:day:x", limit_micros=1_000)
    rid, _ = reserve(ledger, account, [cap])
    assert ledger.settle(reservation_id=rid, cost_micros=150, record=record(account, None, rid))
    assert not ledger.settle(reservation_id=rid, cost_micros=150, record=record(account, None, rid))
    assert not ledger.release(reservation_id=rid)
    assert state(ledger, cap.key) == (150, 0)
    assert [r.cost_micros for r in recorded(ledger)] == [150]


def test_settle_above_the_reservation_charges_the_actual_cost(ledger, account) -> None:  # type: ignore[no-untyped-def]
    cap = CounterSpec("account:1:day:x", limit_micros=1_000)
    rid, _ = reserve(ledger, account, [cap])
    ledger.settle(reservation_id=rid, cost_micros=250, record=record(account, None, rid))
    assert state(ledger, cap.key) == (250, 0)


def test_expired_reservation_is_charged_its_full_amount(ledger, account) -> None:  # type: ignore[no-untyped-def]
    cap = CounterSpec("account:1:day:x", limit_micros=1_000)
    rid, outcome = reserve(ledger, account, [cap])
    assert ledger.sweep_expired() == 0  # not expired yet
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ledger.reservation_ttl_seconds + 1)
    assert ledger.sweep_expired(now=later) == 1
    assert state(ledger, cap.key) == (outcome.amount_micros, 0)
    [row] = recorded(ledger)
    assert str(row.request_id) == rid
    assert row.cost_micros == outcome.amount_micros == 200
    assert row.output_tokens == 50 and row.http_status == 0
    # A late settle from the worker that died changes nothing: a crash only over-counts.
    assert not ledger.settle(reservation_id=rid, cost_micros=1, record=record(account, None, rid))
    assert state(ledger, cap.key) == (200, 0)


def test_an_extended_reservation_is_not_swept_until_its_new_deadline(ledger, account) -> None:  # type: ignore[no-untyped-def]
    # A request still running (a long stream) pushes its deadline on: the sweep must not
    # charge it in full as if its worker had died, and its own settle still counts.
    ledger.reservation_ttl_seconds = 2
    cap = CounterSpec("account:1:day:x", limit_micros=1_000)
    rid, _ = reserve(ledger, account, [cap])
    first_deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    time.sleep(1)
    assert ledger.extend(reservation_id=rid)
    # Past the first deadline, before the new one.
    assert ledger.sweep_expired(now=first_deadline + dt.timedelta(seconds=0.5)) == 0
    assert ledger.settle(reservation_id=rid, cost_micros=130, record=record(account, None, rid))
    assert state(ledger, cap.key) == (130, 0)
    # Settled (or swept) reservations stay gone.
    assert not ledger.extend(reservation_id=rid)
    assert ledger.sweep_expired(now=first_deadline + dt.timedelta(seconds=60)) == 0
    assert [r.cost_micros for r in recorded(ledger)] == [130]


def test_output_is_clamped_to_what_the_tightest_cap_affords(ledger, account) -> None:  # type: ignore[no-untyped-def]
    loose = CounterSpec("account:1:month:x", limit_micros=5_000)
    tight = CounterSpec("key:1:day:x", limit_micros=171)
    _, outcome = reserve(ledger, account, [loose, tight], quote(ceiling=1_000))
    # 100 for the input, then 2 per output token: 35 tokens = 170 ≤ 171 < 172.
    assert outcome.ok and outcome.output_tokens == 35
    assert outcome.amount_micros == 170
    assert outcome.tightest == 1 and outcome.remaining_micros == 1
    assert state(ledger, tight.key) == (0, 170)


def test_clamp_rounds_cost_up_and_never_past_the_limit(ledger, account) -> None:  # type: ignore[no-untyped-def]
    # 0.3 micro-dollars per output token: amounts are rounded up to whole micros.
    q = Quote(fixed_mm=1_500_000, per_output_mm=300_000, ceiling_tokens=10_000, min_tokens=1)
    cap = CounterSpec("key:1:day:x", limit_micros=7)
    _, outcome = reserve(ledger, account, [cap], q)
    # cost(n) = ceil(1.5 + 0.3 n) ≤ 7  ⇔  n ≤ 18
    assert outcome.ok and outcome.output_tokens == 18 and outcome.amount_micros == 7


def test_refuses_when_not_even_the_minimum_output_fits(ledger, account) -> None:  # type: ignore[no-untyped-def]
    cap = CounterSpec("key:1:day:x", limit_micros=100 + 2 * 9)
    _, outcome = reserve(ledger, account, [cap], quote(minimum=10))
    assert not outcome.ok and outcome.tightest == 0
    assert (outcome.spent_micros, outcome.reserved_micros) == (0, 0)


def test_reservations_in_flight_count_against_the_cap(ledger, account) -> None:  # type: ignore[no-untyped-def]
    cap = CounterSpec("key:1:day:x", limit_micros=500)
    _, first = reserve(ledger, account, [cap])
    _, second = reserve(ledger, account, [cap])
    _, third = reserve(ledger, account, [cap])  # 100 left: input fits, no output does
    assert first.ok and second.ok and not third.ok
    assert (third.spent_micros, third.reserved_micros) == (0, 400)


def test_counters_are_per_window_keys(ledger, account) -> None:  # type: ignore[no-untyped-def]
    today = CounterSpec("key:1:day:2026-11-27", limit_micros=200)
    tomorrow = CounterSpec("key:1:day:2026-11-28", limit_micros=200)
    rid, _ = reserve(ledger, account, [today])
    ledger.settle(reservation_id=rid, cost_micros=200, record=None)
    assert not reserve(ledger, account, [today])[1].ok
    assert reserve(ledger, account, [tomorrow])[1].ok
    assert state(ledger, today.key) == (200, 0)


def test_the_async_reserve_with_a_reused_counter_batch_matches_the_sync_contract(
    ledger, account
) -> None:  # type: ignore[no-untyped-def]
    # The proxy's path: areserve, the windowed counters as a batch reused across requests
    # (the Redis ledger keeps their encoding in it), and a per-request run counter after.
    batch = CounterBatch(
        (
            CounterSpec("account:1:month:x", limit_micros=10_000),
            CounterSpec("model:1:gpt:month:x", limit_micros=None),
        )
    )
    run = CounterSpec("run:1:r1", limit_micros=450)

    def areserve(rid: str) -> Any:
        return async_to_sync(ledger.areserve)(
            reservation_id=rid,
            account_id=account.id,
            counters=(*batch.specs, run),
            quote=quote(),
            meta={**record(account, None, rid), "http_status": 0, "choices": 1},
            batch=batch,
        )

    first, second, third = (str(uuid.uuid4()) for _ in range(3))
    assert areserve(first).amount_micros == 200
    outcome = areserve(second)  # the batch's cached encoding, if any, is reused
    assert outcome.ok and outcome.tightest == 2 and outcome.remaining_micros == 50
    for spec in (*batch.specs, run):
        assert state(ledger, spec.key) == (0, 400)
    refused = areserve(third)  # 50 left on the run counter: not even the input fits
    assert not refused.ok and refused.tightest == 2 and refused.reserved_micros == 400
    assert ledger.settle(reservation_id=first, cost_micros=120, record=None)
    assert state(ledger, run.key) == (120, 200)
    assert state(ledger, batch.specs[1].key) == (120, 200)


def test_a_reservation_id_cannot_be_reserved_twice(ledger, account) -> None:  # type: ignore[no-untyped-def]
    cap = CounterSpec("key:1:day:x", limit_micros=1_000)
    rid, _ = reserve(ledger, account, [cap])
    with pytest.raises(Exception):  # noqa: B017, PT011 - ValueError (Redis) / IntegrityError (SQL)
        reserve(ledger, account, [cap], rid=rid)
    assert state(ledger, cap.key) == (0, 200)


def test_cache_hit_usage_is_recorded_without_a_reservation(ledger, account) -> None:  # type: ignore[no-untyped-def]
    rid = str(uuid.uuid4())
    ledger.record_usage({**record(account, None, rid), "cost_micros": 0, "saved_micros": 321})
    [row] = recorded(ledger)
    assert row.cost_micros == 0 and row.saved_micros == 321


# --- Concurrency ------------------------------------------------------------------------------

THREADS = 12
PER_THREAD = 15
LIMIT = 20_000


def hammer(kind: str, prefix: str | None, account_id: int, key_id: int) -> tuple[int, int]:
    """THREADS threads × PER_THREAD requests against one cap, each settling to an actual
    cost at or below what it reserved; returns (admitted, refused)."""
    kwargs = {"prefix": prefix} if prefix else {}
    cap = CounterSpec("key:7:day:2026-11-27", limit_micros=LIMIT)
    tracked = CounterSpec("account:7:day:2026-11-27", limit_micros=None)
    counts = {"ok": 0, "refused": 0}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            ledger = build(kind, **kwargs)
            for i in range(PER_THREAD):
                rid = str(uuid.uuid4())
                q = quote(input_tokens=50 + (n * 7 + i * 13) % 200, ceiling=400, minimum=16)
                outcome = ledger.reserve(
                    reservation_id=rid,
                    account_id=account_id,
                    counters=[cap, tracked],
                    quote=q,
                    meta={"request_id": rid, "account_id": account_id},
                )
                if not outcome.ok:
                    with lock:
                        counts["refused"] += 1
                    continue
                with lock:
                    counts["ok"] += 1
                # Actual cost: the input plus a varying share of the allowed output.
                actual = q.amount_micros(outcome.output_tokens * ((n + i) % 4) // 3)
                rec = {
                    "request_id": rid,
                    "account_id": account_id,
                    "api_key_id": key_id,
                    "endpoint": "chat.completions",
                    "model": "gpt-4o-mini",
                    "cache_status": "MISS",
                    "http_status": 200,
                }
                if i % 5 == 4:
                    ledger.release(reservation_id=rid, record=None)
                else:
                    ledger.settle(reservation_id=rid, cost_micros=actual, record=rec)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, [repr(e.__cause__) for e in errors]
    assert not any(t.is_alive() for t in threads)
    return counts["ok"], counts["refused"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_never_exceed_the_cap_and_records_match(ledger_kind) -> None:  # type: ignore[no-untyped-def]
    """Real concurrent connections (threads; on PostgreSQL each its own connection)."""
    account = Account.objects.create(name="busy")
    api_key = make_api_key(account)
    ledger = build(ledger_kind)
    prefix = ledger.prefix if isinstance(ledger, RedisLedger) else None
    try:
        admitted, refused = hammer(ledger_kind, prefix, account.id, api_key.id)
        ledger.drain_usage()
        cap_key = "key:7:day:2026-11-27"
        spent, reserved = state(ledger, cap_key)
        assert reserved == 0
        assert spent <= LIMIT  # never over, not by one micro-dollar
        assert refused > 0 and admitted > 0  # the cap was actually contended
        total = UsageRecord.objects.aggregate(total=Sum("cost_micros"))["total"] or 0
        # Nothing lost: the ledger's settled total equals the sum of recorded costs.
        assert total == spent
        if isinstance(ledger, SqlLedger):
            assert not Reservation.objects.filter(settled_at__isnull=True).exists()
    finally:
        if isinstance(ledger, RedisLedger):
            cleanup_redis(ledger)


@pytest.mark.skipif(REDIS_SKIP, reason=f"no Redis answers at {REDIS_URL}")
def test_a_counter_a_refusal_creates_in_redis_still_expires(account) -> None:  # type: ignore[no-untyped-def]
    # A refusal marks the refusing counter (the key shows as capped). When that is the
    # counter's first touch (a new run id whose budget header is 0, a prompt dearer than
    # a fresh day's cap), the mark must carry the counter's expiry too: an agent minting a
    # run id per request would otherwise leave Redis one never-expiring hash per refusal.
    ledger = redis_ledger()
    try:
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=90)
        fresh = CounterSpec("run:1:fresh", limit_micros=0, expires_at=expires)
        _, outcome = reserve(ledger, account, [fresh])
        assert not outcome.ok
        ttl = ledger.client().ttl(ledger.counter_key(fresh.key))
        assert 0 < ttl <= 90 * 86400
    finally:
        cleanup_redis(ledger)
