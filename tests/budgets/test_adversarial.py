"""Adversarial probes of the ledger and the admission service (review2).

Each test states one way the "a cap is never exceeded, nothing is lost" promise could
break. Each defect these probes found is fixed; its test stays as the regression guard.
Parametrised over both ledgers (SQL, and Redis when one answers).
"""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from asgiref.sync import async_to_sync
from django.db.models import Sum

from budgets import services
from budgets.ledger import Ledger
from budgets.models import Cap, UsageRecord
from budgets.reconcile import ledger_reconcile
from budgets.services import (
    BudgetExceeded,
    Refused,
    budget_admit,
    budget_settle,
    cap_status,
    run_counter_key,
)

from .conftest import Key, admit_request, key_for, make_api_key, usage

admit = async_to_sync(budget_admit)
settle = async_to_sync(budget_settle)

MODEL = "gpt-4o-mini"  # 0.15 µ$ per input token, 0.6 µ$ per output token


@pytest.fixture
def key(owner, configured_ledger) -> Key:  # type: ignore[no-untyped-def]
    owner.account.timezone = "Europe/Berlin"
    owner.account.save()
    return key_for(make_api_key(owner.account))


def cap(key: Key, *, scope: str = "key", period: str = "day", limit: int) -> Cap:
    return Cap.objects.create(
        account_id=key.account_id,
        scope=scope,
        period=period,
        api_key_id=key.api_key_id if scope in ("key", "run") else None,
        limit_micros=limit,
    )


def key_status(key: Key, period: str = "day") -> tuple[int, int]:
    from accounts.models import Account

    account = Account.objects.get(id=key.account_id)
    [status] = [s for s in cap_status(account=account) if s.scope == "key" and s.period == period]
    return status.spent_micros, status.reserved_micros


# --- what settle does with a provider bill above the reservation -----------------------


def test_a_settle_above_the_reservation_is_charged_so_the_cap_rests_on_the_bound(
    key: Key, configured_ledger: Ledger
) -> None:
    """By design the ledger charges what the provider billed, even past the cap (an
    under-count would hide real spend). So every input/output bound in proxy/ must be a
    true upper bound: any under-count there is an overshoot here (see
    tests/proxy/test_adversarial.py for the ones found)."""
    cap(key, limit=1_000)
    admission = admit(admit_request(key))
    assert admission.reserved_micros == 210
    settle(admission=admission, usage=usage(1_500))
    assert key_status(key) == (1_500, 0)  # past the cap: the bill is recorded in full
    with pytest.raises(BudgetExceeded):
        admit(admit_request(key))  # and nothing more is admitted


# --- run budget header values reaching the service ---------------------------------------


@pytest.mark.parametrize("budget", [0, -5])
def test_a_run_budget_of_zero_or_less_refuses_everything(
    key: Key, configured_ledger: Ledger, budget: int
) -> None:
    with pytest.raises(BudgetExceeded) as exc:
        admit(admit_request(key, run_id="r1", run_budget_micros=budget))
    assert exc.value.scope == "run"


def test_a_huge_run_budget_neither_breaks_the_ledger_nor_the_remaining_figure(
    key: Key, configured_ledger: Ledger
) -> None:
    huge = 10**315  # what run_headers makes of "1e309" dollars
    try:
        admission = admit(admit_request(key, run_id="r-huge", run_budget_micros=huge))
    except Refused as exc:  # a clear refusal would be fine too
        assert exc.http_status < 500
        return
    assert admission.remaining_micros is None or 0 <= admission.remaining_micros < huge
    settle(admission=admission, usage=usage(admission.reserved_micros))
    state = configured_ledger.read_counters(
        [run_counter_key(api_key_id=key.api_key_id, run_id="r-huge")]
    )
    assert sum(s.reserved_micros for s in state.values()) == 0


def test_run_counters_of_different_runs_do_not_share_spend(
    key: Key, configured_ledger: Ledger
) -> None:
    cap(key, scope="run", period="run", limit=300)
    first = admit(admit_request(key, run_id="a:b"))
    settle(admission=first, usage=usage(first.reserved_micros))
    # A run id that looks like another counter's key (':' inside) is its own counter.
    second = admit(admit_request(key, run_id="a"))
    settle(admission=second, usage=usage(second.reserved_micros))
    with pytest.raises(BudgetExceeded):
        admit(admit_request(key, run_id="a:b", requested_output_tokens=200))


# --- windows rolling over while a reservation is open --------------------------------------


def test_a_reservation_open_across_midnight_is_settled_in_the_day_it_was_reserved(
    key: Key, configured_ledger: Ledger
) -> None:
    cap(key, limit=10_000)
    before = dt.datetime(2027, 12, 31, 22, 59, 59, tzinfo=dt.UTC)  # 23:59:59 in Berlin
    with time_machine.travel(before, tick=False):
        admission = admit(admit_request(key))
    with time_machine.travel(before + dt.timedelta(seconds=5), tick=False):
        # The new day (and month) starts with nothing reserved or spent ...
        assert key_status(key) == (0, 0)
        settle(admission=admission, usage=usage(150))
        assert key_status(key) == (0, 0)
        assert key_status(key, "day") == (0, 0)
    with time_machine.travel(before, tick=False):
        # ... and the old day holds the charge: never lost, never left reserved.
        assert key_status(key) == (150, 0)


def test_a_reservation_swept_after_the_month_rolled_over_is_charged_to_its_month(
    key: Key, configured_ledger: Ledger
) -> None:
    cap(key, period="month", limit=10_000)
    before = dt.datetime(2027, 12, 31, 22, 59, 0, tzinfo=dt.UTC)
    with time_machine.travel(before, tick=False):
        admission = admit(admit_request(key))
    later = before + dt.timedelta(seconds=configured_ledger.reservation_ttl_seconds + 5)
    with time_machine.travel(later, tick=False):
        assert services.reservations_sweep() == 1
        assert key_status(key, "month") == (0, 0)
    with time_machine.travel(before, tick=False):
        assert key_status(key, "month") == (admission.reserved_micros, 0)
    configured_ledger.drain_usage()
    assert UsageRecord.objects.get().cost_micros == admission.reserved_micros


def test_a_request_settled_after_midnight_does_not_show_as_ledger_drift(
    key: Key, configured_ledger: Ledger
) -> None:
    cap(key, limit=10_000)
    before = dt.datetime(2027, 12, 31, 22, 59, 59, tzinfo=dt.UTC)
    with time_machine.travel(before, tick=False):
        admission = admit(admit_request(key))
    after = before + dt.timedelta(seconds=5)
    with time_machine.travel(after, tick=False):
        settle(admission=admission, usage=usage(150))
        configured_ledger.drain_usage()  # (reconcile picks accounts before it drains)
        report = ledger_reconcile(now=after, reads=1)
    assert UsageRecord.objects.aggregate(t=Sum("cost_micros"))["t"] == 150
    assert report["windows"] == [], report["windows"]
