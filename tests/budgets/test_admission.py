"""budget_admit / settle / release / cache hits / cap status, on the configured ledger
(parametrised: SQL, and Redis when REDIS_URL is set)."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from asgiref.sync import async_to_sync
from django.db.models import Sum
from django.urls import reverse

from budgets import services, tasks
from budgets.ledger import reset_ledger
from budgets.models import Cap, ModelPrice, UsageRecord
from budgets.pricing import UnknownModel
from budgets.services import (
    AccountGone,
    AccountPaused,
    BudgetExceeded,
    KeyPaused,
    LedgerUnavailable,
    budget_admit,
    budget_release,
    budget_settle,
    cap_status,
    capped_keys,
    record_cache_hit,
)
from tests.conftest import free_port

from .conftest import Key, key_for, make_api_key, usage
from .conftest import admit_request as request

admit = async_to_sync(budget_admit)
settle = async_to_sync(budget_settle)
release = async_to_sync(budget_release)

# gpt-4o-mini: $0.15 in / $0.60 out per MTok → 0.15 µ$ per input token, 0.6 µ$ per output.
MODEL = "gpt-4o-mini"


@pytest.fixture
def key(owner, configured_ledger) -> Key:  # type: ignore[no-untyped-def]
    owner.account.timezone = "Asia/Kolkata"
    owner.account.save()
    return key_for(make_api_key(owner.account))


def cap(key: Key, *, scope: str = "key", period: str = "day", limit: int, **kw: object) -> Cap:
    return Cap.objects.create(
        account_id=key.account_id,
        scope=scope,
        period=period,
        api_key_id=key.api_key_id if scope in ("key", "run") else kw.pop("api_key_id", None),
        limit_micros=limit,
        **kw,
    )


def test_admit_reserves_the_worst_case_and_settle_records_the_actual(
    key, configured_ledger
) -> None:  # type: ignore[no-untyped-def]
    cap(key, limit=1_000_000)
    admission = admit(request(key))
    # 1000 input tokens × 0.15 + 100 output × 0.6 = 150 + 60 µ$.
    assert admission.reserved_micros == 210
    assert admission.output_tokens_allowed == 100 and not admission.clamped
    assert admission.remaining_micros == 1_000_000 - 210

    settle(admission=admission, usage=usage(144))
    configured_ledger.drain_usage()
    row = UsageRecord.objects.get()
    assert row.cost_micros == 144 and row.api_key_id == key.api_key_id
    [status] = cap_status(account=row.account)
    assert (status.spent_micros, status.reserved_micros) == (144, 0)


def test_a_request_naming_no_max_tokens_is_bounded_by_the_model_ceiling(key) -> None:  # type: ignore[no-untyped-def]
    admission = admit(request(key, requested_output_tokens=None))
    assert admission.clamped  # the proxy writes the bound into the request
    assert admission.output_tokens_allowed == 16_384


def test_output_is_lowered_to_what_the_cap_affords(key) -> None:  # type: ignore[no-untyped-def]
    cap(key, limit=150 + 30)  # input 150 µ$, then 0.6 µ$ per output token: 50 tokens
    admission = admit(request(key, requested_output_tokens=4_000))
    assert admission.clamped and admission.output_tokens_allowed == 50
    assert admission.reserved_micros == 180 and admission.remaining_micros == 0


def test_choices_multiply_the_output_bound(key) -> None:  # type: ignore[no-untyped-def]
    cap(key, limit=150 + 30)
    admission = admit(request(key, requested_output_tokens=4_000, choices=2))
    assert admission.output_tokens_allowed == 25


def test_over_the_cap_is_a_402_naming_the_cap_spend_and_reset(key) -> None:  # type: ignore[no-untyped-def]
    cap(key, period="month", limit=500)
    settle(admission=admit(request(key)), usage=usage(400))
    with pytest.raises(BudgetExceeded) as exc:
        admit(request(key))
    err = exc.value
    assert err.http_status == 402
    body = err.to_openai_error()["error"]
    assert body["type"] == "budget_exceeded" and body["code"] == "key_month_cap"
    assert body["param"] is None and body["scope"] == "key"
    assert (body["limit_usd"], body["spent_usd"], body["reserved_usd"]) == (
        "0.0005",
        "0.0004",
        "0.00",
    )
    assert body["resets_at"].endswith("+05:30")
    # Not reached: what is left is less than this request's worst case; says both.
    assert body["message"] == (
        "Monthly key cap (key 'ci-bot') of $0.0005 has $0.0001 left ($0.0004 spent); this "
        "request needs up to $0.00016 even with the shortest answer. "
        "Resets 2026-12-01 00:00 Asia/Kolkata."
    )
    settle(admission=admit(request(key, input_tokens_bound=100)), usage=usage(100))
    with pytest.raises(BudgetExceeded) as exc:
        admit(request(key))
    assert exc.value.message.startswith(
        "Monthly key cap (key 'ci-bot') of $0.0005 reached: $0.0005 spent; resets 2026-12-01"
    )


def test_every_applicable_cap_must_admit(key) -> None:  # type: ignore[no-untyped-def]
    cap(key, limit=10_000)
    cap(key, scope="account", period="month", limit=100)
    with pytest.raises(BudgetExceeded) as exc:
        admit(request(key))
    assert exc.value.code == "account_month_cap"
    [key_status] = [s for s in cap_status_for(key) if s.scope == "key"]
    assert key_status.reserved_micros == 0  # nothing held on the cap that would have admitted


def cap_status_for(key: Key) -> list[services.CapStatus]:
    from accounts.models import Account

    return cap_status(account=Account.objects.get(id=key.account_id))


def test_model_caps_apply_to_dated_snapshots_too(key) -> None:  # type: ignore[no-untyped-def]
    cap(key, scope="model", limit=100, model="gpt-4o-mini")
    with pytest.raises(BudgetExceeded) as exc:
        admit(request(key, model="gpt-4o-mini-2024-07-18"))
    assert exc.value.code == "model_day_cap"
    admit(request(key, model="gpt-4.1-nano"))  # another model is not capped


def test_model_caps_apply_to_four_digit_snapshots_too(key) -> None:  # type: ignore[no-untyped-def]
    # gpt-4-0613 and gpt-3.5-turbo-0125 are snapshots of gpt-4 / gpt-3.5-turbo named by
    # month and day only; both are priced, so a cap on the family must cover them.
    cap(key, scope="model", limit=100, model="gpt-4")
    cap(key, scope="model", limit=100, model="gpt-3.5-turbo")
    with pytest.raises(BudgetExceeded) as exc:
        admit(request(key, model="gpt-4-0613"))
    assert exc.value.code == "model_day_cap"
    with pytest.raises(BudgetExceeded):
        admit(request(key, model="gpt-3.5-turbo-0125"))
    admit(request(key, model="gpt-4.1-nano"))  # another model is not capped


def test_run_budget_header_can_lower_the_run_cap_but_never_raise_it(key) -> None:  # type: ignore[no-untyped-def]
    cap(key, scope="run", period="run", limit=300)
    # Header above the cap: the cap (300) still applies, 150 input + 0.6/token → 250 tokens.
    raised = admit(
        request(key, run_id="r1", run_budget_micros=10_000, requested_output_tokens=None)
    )
    assert raised.output_tokens_allowed == 250
    # Header below the cap lowers it for this run: 180 → 50 tokens.
    lowered = admit(request(key, run_id="r2", run_budget_micros=180, requested_output_tokens=None))
    assert lowered.output_tokens_allowed == 50
    with pytest.raises(BudgetExceeded) as exc:
        admit(request(key, run_id="r2", run_budget_micros=180))
    assert exc.value.code == "run_run_cap" and exc.value.resets_at is None


def test_a_run_refusal_names_the_run_cap_and_the_header_that_lowered_it(
    key, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    # The Caps page shows the key's run cap; a 402 quoting a lower figure must say where
    # that figure came from, or the user hunts for a cap that is not there.
    cap(key, scope="run", period="run", limit=300)
    with pytest.raises(BudgetExceeded) as exc:
        admit(request(key, run_id="r1", run_budget_micros=100))
    assert exc.value.message.startswith(
        "Per-run cap (run 'r1', lowered from $0.0003 by X-BudgetLLM-Run-Budget-USD) of "
        "$0.0001 has $0.0001 left ($0.00 spent); this request needs up to $0.00016"
    )
    assert exc.value.code == "run_run_cap" and exc.value.limit_micros == 100
    with pytest.raises(BudgetExceeded) as exc:
        admit(request(key, run_id="r2", run_budget_micros=10_000, input_tokens_bound=5_000))
    assert exc.value.message.startswith("Per-run cap (run 'r2') of $0.0003 has $0.0003 left")
    with django_capture_on_commit_callbacks(execute=True):
        Cap.objects.get(scope="run").delete()
    with pytest.raises(BudgetExceeded) as exc:
        admit(request(key, run_id="r3", run_budget_micros=100))
    assert exc.value.message.startswith(
        "Per-run cap (run 'r3', set by X-BudgetLLM-Run-Budget-USD) of $0.0001 has $0.0001 left"
    )


def test_a_cap_change_applies_to_the_very_next_request(
    key, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        row = cap(key, limit=1_000_000)
    admit(request(key))  # caps now cached (Redis ledger)
    with django_capture_on_commit_callbacks(execute=True):
        row.limit_micros = 10
        row.save()
    with pytest.raises(BudgetExceeded):
        admit(request(key))
    with django_capture_on_commit_callbacks(execute=True):
        row.delete()
    admit(request(key))


def test_paused_key_and_account_are_refused_with_403(key) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    with pytest.raises(KeyPaused) as k:
        admit(request(replace(key, key_paused=True)))
    assert k.value.http_status == 403
    assert k.value.to_openai_error()["error"]["type"] == "key_paused"
    with pytest.raises(AccountPaused) as a:
        admit(request(replace(key, account_paused=True)))
    assert a.value.to_openai_error()["error"]["type"] == "account_paused"


def test_a_deleted_account_is_refused_as_an_unknown_key_on_either_ledger(key, owner) -> None:  # type: ignore[no-untyped-def]
    # The proxy keeps a resolved key for PROXY_KEY_CACHE_SECONDS: its account can be gone.
    owner.account.delete()
    with pytest.raises(AccountGone) as gone:
        admit(request(key))
    assert gone.value.http_status == 401
    assert gone.value.to_openai_error()["error"]["code"] == "invalid_api_key"


def test_unknown_model_is_refused_unless_the_account_prices_it(key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownModel):
        admit(request(key, model="acme-llm-7b"))
    ModelPrice.objects.create(
        account_id=key.account_id,
        model="acme-llm-7b",
        input_micros_per_mtok=1_000_000,
        output_micros_per_mtok=2_000_000,
        max_output_tokens=1_000,
    )
    services.caps_changed(account_id=key.account_id)
    admission = admit(request(key, model="acme-llm-7b", requested_output_tokens=None))
    assert admission.output_tokens_allowed == 1_000
    assert admission.reserved_micros == 1_000 + 2_000


def test_embeddings_reserve_input_only(key) -> None:  # type: ignore[no-untyped-def]
    admission = admit(request(key, endpoint="embeddings", model="text-embedding-3-small"))
    assert admission.output_tokens_allowed == 0 and not admission.clamped
    assert admission.reserved_micros == 20  # 1000 × $0.02/MTok


def test_release_frees_the_reservation_and_can_record_the_failure(key, configured_ledger) -> None:  # type: ignore[no-untyped-def]
    cap(key, limit=300)
    admission = admit(request(key))
    release(admission=admission, usage=usage(0, http_status=500))
    [status] = cap_status_for(key)
    assert (status.spent_micros, status.reserved_micros) == (0, 0)
    configured_ledger.drain_usage()
    assert UsageRecord.objects.get().http_status == 500


def test_cache_hits_are_recorded_and_not_blocked_by_an_exhausted_cap(
    key, configured_ledger
) -> None:  # type: ignore[no-untyped-def]
    cap(key, limit=100)
    with pytest.raises(BudgetExceeded):
        admit(request(key))
    record_cache_hit(key=key, usage=usage(0, cache_status="HIT", saved_micros=210))
    configured_ledger.drain_usage()
    row = UsageRecord.objects.get()
    assert (row.cost_micros, row.saved_micros, row.cache_status) == (0, 210, "HIT")


def test_a_capped_key_shows_paused_until_its_day_rolls_over(owner, key) -> None:  # type: ignore[no-untyped-def]
    from accounts.models import Account

    account = Account.objects.get(id=key.account_id)
    cap(key, limit=300)

    def keys_page_status() -> str:
        html = owner.client.get(reverse("keys:index")).content.decode()
        badge = html[html.index('<span class="badge', html.index("<code>bllm_")) :]
        return badge[: badge.index("</span>")]

    assert "active" in keys_page_status()
    with time_machine.travel(dt.datetime(2026, 11, 27, 18, 0, tzinfo=dt.UTC), tick=False):
        settle(admission=admit(request(key)), usage=usage(200))
        with pytest.raises(BudgetExceeded) as exc:
            admit(request(key))
        resets = exc.value.resets_at
        assert capped_keys(account=account) == {key.api_key_id: resets}
        [status] = cap_status(account=account)
        assert status.capped and status.percent == 66
        # The Keys page shows it paused, and when it serves again, in the account's zone.
        assert "paused: cap reached, serves again 2026-11-28 00:00 IST" in keys_page_status()
    # Kolkata's next day starts at 18:30 UTC.
    with time_machine.travel(dt.datetime(2026, 11, 27, 18, 30, tzinfo=dt.UTC), tick=False):
        assert capped_keys(account=account) == {}
        assert "active" in keys_page_status()
        admit(request(key))


def test_each_request_reserves_against_its_own_days_counter_whatever_was_planned_before(
    key,
) -> None:  # type: ignore[no-untyped-def]
    # The windowed counters are planned once per key, model and day and reused: a plan
    # must never serve another day, forwards (midnight) or back (a clock set back).
    cap(key, limit=1_000)
    day_one = dt.datetime(2026, 11, 27, 18, 29, 59, tzinfo=dt.UTC)  # 23:59:59 in Kolkata
    day_two = dt.datetime(2026, 11, 27, 18, 30, tzinfo=dt.UTC)
    for moment, reserved_before in ((day_one, 0), (day_two, 0), (day_one, 210)):
        with time_machine.travel(moment, tick=False):
            [status] = cap_status_for(key)
            assert status.reserved_micros == reserved_before
            admit(request(key))
            [status] = cap_status_for(key)
            assert status.reserved_micros == reserved_before + 210


def test_a_cap_change_replans_the_counters_of_a_key_already_serving(key, settings) -> None:  # type: ignore[no-untyped-def]
    settings.LEDGER_CONFIG_CACHE_SECONDS = 3600
    admit(request(key))  # plans this key's counters with no key cap
    new_cap = cap(key, limit=250)
    services.caps_changed(account_id=key.account_id)
    with pytest.raises(BudgetExceeded):
        admit(request(key))  # 210 reserved + 210 more would pass the new 250 cap
    new_cap.limit_micros = 1_000
    new_cap.save()
    services.caps_changed(account_id=key.account_id)
    assert admit(request(key)).remaining_micros == 1_000 - 420


def test_the_free_plan_limits_monthly_spend_without_any_cap(key) -> None:  # type: ignore[no-untyped-def]
    # Free plan: $100 a month at most (billing.entitlements).
    admission = admit(request(key))
    assert admission.remaining_micros == 100_000_000 - admission.reserved_micros


def test_expired_reservations_are_swept_at_full_cost_by_the_periodic_task(
    key, configured_ledger
) -> None:  # type: ignore[no-untyped-def]
    cap(key, limit=10_000)
    admission = admit(request(key))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(
        seconds=configured_ledger.reservation_ttl_seconds + 5
    )
    with time_machine.travel(later, tick=False):
        assert tasks.sweep_expired_reservations.delay().get() == 1
    tasks.drain_usage.delay()
    row = UsageRecord.objects.get()
    assert row.cost_micros == admission.reserved_micros == 210
    assert str(row.request_id) == admission.reservation_id
    [status] = cap_status_for(key)
    assert (status.spent_micros, status.reserved_micros) == (210, 0)


def test_settled_total_equals_recorded_costs(key, configured_ledger) -> None:  # type: ignore[no-untyped-def]
    cap(key, limit=2_000)
    costs = []
    for i in range(15):
        try:
            admission = admit(request(key))
        except BudgetExceeded:
            break
        cost = admission.reserved_micros - i
        settle(admission=admission, usage=usage(cost))
        costs.append(cost)
    configured_ledger.drain_usage()
    [status] = cap_status_for(key)
    assert status.spent_micros == sum(costs) <= 2_000
    assert UsageRecord.objects.aggregate(t=Sum("cost_micros"))["t"] == sum(costs)


def test_redis_down_refuses_with_503(key, settings) -> None:  # type: ignore[no-untyped-def]
    settings.LEDGER_BACKEND = "redis"
    settings.LEDGER_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.LEDGER_REDIS_TIMEOUT_SECONDS = 0.5
    reset_ledger()
    services._config_cache.clear()
    with pytest.raises(LedgerUnavailable) as exc:
        admit(request(key))
    assert exc.value.http_status == 503
    assert "Redis at 127.0.0.1" in exc.value.message
    reset_ledger()


def test_concurrent_admissions_through_the_service_never_pass_the_cap(
    key, configured_ledger
) -> None:  # type: ignore[no-untyped-def]
    """60 requests in flight at once on one event loop (the proxy's shape): every one is
    reserved before any settles, so only what the cap affords is admitted."""
    import asyncio

    cap(key, limit=2_000)

    async def one(i: int) -> int:
        try:
            admission = await budget_admit(request(key, requested_output_tokens=None))
        except BudgetExceeded:
            return 0
        await asyncio.sleep(0)
        cost = admission.reserved_micros * (i % 3) // 2
        await budget_settle(admission=admission, usage=usage(cost))
        return cost

    async def run() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(60)))

    charged = async_to_sync(run)()
    configured_ledger.drain_usage()
    [status] = cap_status_for(key)
    assert status.reserved_micros == 0
    assert status.spent_micros == sum(charged) <= 2_000
    assert UsageRecord.objects.aggregate(t=Sum("cost_micros"))["t"] == sum(charged)
    assert UsageRecord.objects.count() < 60  # some were refused or clamped away
