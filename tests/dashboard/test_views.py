from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
import time_machine
from django.urls import reverse

from budgets.models import MICROS_PER_USD, Cap
from budgets.rollups import rollup_day
from tests.dashboard.conftest import make_key, record

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _frozen():  # type: ignore[no-untyped-def]
    with time_machine.travel(NOW, tick=False):
        yield


def test_first_sign_in_goes_to_onboarding(owner) -> None:  # type: ignore[no-untyped-def]
    response = owner.client.get(reverse("dashboard"))
    assert response.status_code == 302 and response["Location"] == reverse("onboarding")


def test_dashboard_shows_today_month_saved_and_hit_rate(owner, key) -> None:  # type: ignore[no-untyped-def]
    record(owner.account, key, NOW - dt.timedelta(hours=1), cost=1_500_000)
    record(owner.account, key, NOW - dt.timedelta(hours=1), saved=250_000, hit=True)
    earlier = NOW - dt.timedelta(days=3)
    record(owner.account, key, earlier, cost=2_000_000)
    rollup_day(account=owner.account, day=earlier.date())
    Cap.objects.create(
        account=owner.account, scope="account", period="month", limit_micros=4 * MICROS_PER_USD
    )

    response = owner.client.get(reverse("dashboard"))

    assert response.status_code == 200
    header = response.context["header"]
    assert header.today.cost_micros == 1_500_000 and header.today.requests == 2
    assert header.month.cost_micros == 3_500_000
    assert header.month.saved_micros == 250_000
    assert header.month.hit_rate == 33
    assert header.month_cap.level == "warn"  # 87 %: amber from 80 %
    body = response.content.decode()
    assert "$0.25" in body and "$3.50" in body
    chart = json.loads(response.context["chart"] and json.dumps(response.context["chart"]))
    assert chart["spend"][0]["usd"][-1] == 1.5 and chart["spend"][0]["usd"][-4] == 2.0
    assert chart["saved"][-1] == 0.25


def test_tiny_amounts_are_not_shown_as_zero(owner, key) -> None:  # type: ignore[no-untyped-def]
    record(owner.account, key, NOW - dt.timedelta(minutes=5), cost=42)
    body = owner.client.get(reverse("dashboard")).content.decode()
    assert "$0.000042" in body


def test_chart_switch_returns_only_the_chart_partial(owner, key) -> None:  # type: ignore[no-untyped-def]
    record(owner.account, key, NOW, cost=1000)
    response = owner.client.get(
        reverse("dashboard_chart") + "?days=7", headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="charts"' in body and "<html" not in body and "Recent requests" not in body
    data = json.loads(
        body.split('id="chart-data" type="application/json">')[1].split("</script>")[0]
    )
    assert len(data["labels"]) == 7 and data["labels"][-1] == "2026-11-20"


def test_chart_link_without_htmx_renders_the_page(owner, key) -> None:  # type: ignore[no-untyped-def]
    response = owner.client.get(reverse("dashboard_chart") + "?days=90")
    assert response["Location"] == reverse("dashboard") + "?days=90"
    page = owner.client.get(reverse("dashboard") + "?days=90")
    assert page.context["chart"]["days"] == 90


def test_days_are_counted_in_the_account_time_zone(owner, key) -> None:  # type: ignore[no-untyped-def]
    owner.account.timezone = "Pacific/Auckland"  # UTC+13 in November
    owner.account.save()
    record(
        owner.account, key, dt.datetime(2026, 11, 20, 11, 30, tzinfo=dt.UTC), cost=1000
    )  # 00:30 on the 21st
    response = owner.client.get(reverse("dashboard"))
    assert response.context["window"].today == dt.date(2026, 11, 21)
    assert response.context["header"].today.cost_micros == 1000


def test_recent_requests_paginate_with_htmx(owner, key) -> None:  # type: ignore[no-untyped-def]
    for i in range(30):
        record(owner.account, key, NOW - dt.timedelta(minutes=i), cost=i + 1)
    first = owner.client.get(reverse("dashboard"))
    assert len(first.context["recent"]) == 25 and first.context["has_more"]
    second = owner.client.get(
        reverse("dashboard_requests") + "?page=2", headers={"HX-Request": "true"}
    )
    assert len(second.context["recent"]) == 5 and not second.context["has_more"]
    assert "<html" not in second.content.decode()


def test_top_runs_and_breakdowns(owner, key) -> None:  # type: ignore[no-untyped-def]
    dev = make_key(owner.account, "dev")
    record(owner.account, key, NOW, cost=300, run_id="run-a")
    record(owner.account, dev, NOW, cost=900, run_id="run-b", model="gpt-4o")
    response = owner.client.get(reverse("dashboard"))
    assert [r.run_id for r in response.context["runs"]] == ["run-b", "run-a"]
    assert [r.label for r in response.context["by_key"]] == ["dev", "prod"]
    assert [r.label for r in response.context["by_model"]] == ["gpt-4o", "gpt-4o-mini"]


def test_capped_key_shows_banner_naming_cap_and_reset(owner, key) -> None:  # type: ignore[no-untyped-def]
    Cap.objects.create(
        account=owner.account, scope="key", api_key=key, period="day", limit_micros=1000
    )
    record(owner.account, key, NOW, cost=1000)
    body = owner.client.get(reverse("dashboard")).content.decode()
    assert "Daily cap on key “prod” reached" in body
    assert "Raise cap" in body and "Sat 21 Nov, 00:00" in body


def test_a_model_cap_counts_its_snapshots_and_any_case_like_the_ledger(owner, key) -> None:  # type: ignore[no-untyped-def]
    # The ledger counts gpt-4o-2024-08-06 and "GPT-4o" against a cap on gpt-4o
    # (budgets.services.canonical_model): the caps page must show the same spend, or a cap
    # the proxy already enforces shows as barely used.
    Cap.objects.create(
        account=owner.account, scope="model", model="gpt-4o", period="day", limit_micros=5000
    )
    record(owner.account, key, NOW, cost=3000, model="gpt-4o-2024-08-06")
    record(owner.account, key, NOW, cost=2000, model="GPT-4o")
    record(owner.account, key, NOW, cost=700, model="gpt-4o-mini")  # another model
    [progress] = owner.client.get(reverse("caps")).context["caps"]
    assert progress.spent_micros == 5000 and progress.reached
    body = owner.client.get(reverse("dashboard")).content.decode()
    assert "Daily cap on model gpt-4o reached" in body


def test_kill_switch_pauses_and_resumes_account_and_key(owner, key) -> None:  # type: ignore[no-untyped-def]
    confirm = owner.client.get(reverse("account_pause"))
    assert confirm.status_code == 200 and b"Yes, pause now" in confirm.content
    owner.client.post(reverse("account_pause"))
    owner.account.refresh_from_db()
    assert owner.account.paused_at is not None
    assert b"Your account is paused" in owner.client.get(reverse("dashboard")).content
    owner.client.post(reverse("account_resume"))
    owner.account.refresh_from_db()
    assert owner.account.paused_at is None

    response = owner.client.post(
        reverse("key_pause", args=[key.public_id]), headers={"HX-Request": "true"}
    )
    assert response["HX-Redirect"] == reverse("dashboard")
    key.refresh_from_db()
    assert key.paused_at is not None
    owner.client.post(reverse("key_resume", args=[key.public_id]))
    key.refresh_from_db()
    assert key.paused_at is None


def test_outsider_gets_404_for_another_accounts_key_and_cap(owner, outsider, key) -> None:  # type: ignore[no-untyped-def]
    cap = Cap.objects.create(account=owner.account, scope="account", period="day", limit_micros=5)
    for url in (
        reverse("key_pause", args=[key.public_id]),
        reverse("key_resume", args=[key.public_id]),
    ):
        assert outsider.client.post(url).status_code == 404
    assert outsider.client.get(reverse("key_pause", args=[key.public_id])).status_code == 404
    assert outsider.client.post(reverse("cap_remove", args=[cap.public_id])).status_code == 404
    key.refresh_from_db()
    assert key.paused_at is None and Cap.objects.filter(pk=cap.pk).exists()


def test_outsider_never_sees_another_accounts_usage(owner, outsider, key) -> None:  # type: ignore[no-untyped-def]
    record(owner.account, key, NOW, cost=777_777, run_id="secret-run")
    make_key(outsider.account, "mine")
    body = outsider.client.get(reverse("dashboard")).content.decode()
    assert "$0.78" not in body and "secret-run" not in body and "prod" not in body
    partial = outsider.client.get(
        reverse("dashboard_requests") + "?page=1", headers={"HX-Request": "true"}
    )
    assert "secret-run" not in partial.content.decode() and "777" not in partial.content.decode()


def test_pages_need_sign_in(client) -> None:  # type: ignore[no-untyped-def]
    for name in ("dashboard", "caps", "onboarding", "dashboard_chart"):
        assert client.get(reverse(name)).status_code == 302


def test_the_free_plans_monthly_limit_reached_shows_a_banner_without_any_cap(owner, key) -> None:  # type: ignore[no-untyped-def]
    # The Free plan holds monthly spend to $100 with no Cap row: when that limit refuses
    # requests, the dashboard must say why, as it does for a cap.
    from budgets.ledger import CounterSpec, Quote, get_ledger
    from budgets.pricing import TOKENS_PER_MTOK
    from budgets.services import counter_key

    def spend(micros: int) -> None:
        ledger = get_ledger()
        rid = uuid.uuid4().hex
        month = counter_key(
            scope="account",
            period="month",
            label="2026-11",
            account_id=owner.account.id,
            api_key_id=None,
            model="",
        )
        outcome = ledger.reserve(
            reservation_id=rid,
            account_id=owner.account.id,
            counters=[CounterSpec(key=month, limit_micros=None)],
            quote=Quote(
                fixed_mm=micros * TOKENS_PER_MTOK, per_output_mm=0, ceiling_tokens=0, min_tokens=0
            ),
            meta={},
        )
        assert outcome.ok
        ledger.settle(reservation_id=rid, cost_micros=micros, record=None)

    record(owner.account, key, NOW, cost=1000)  # not the first visit: no onboarding
    spend(99 * MICROS_PER_USD)
    assert "plan_limit" not in owner.client.get(reverse("dashboard")).content.decode()
    spend(1 * MICROS_PER_USD)
    body = owner.client.get(reverse("dashboard")).content.decode()
    assert "The Free plan&#x27;s monthly limit reached" in body
    assert "Spent $100.00 of $100.00 this month" in body and "Tue 1 Dec, 00:00" in body
    # A cap of the account's own, stricter than the plan, is the limit that shows instead.
    Cap.objects.create(
        account=owner.account, scope="account", period="month", limit_micros=50 * MICROS_PER_USD
    )
    body = owner.client.get(reverse("dashboard")).content.decode()
    assert "plan_limit" not in body and "Monthly account cap reached" in body
