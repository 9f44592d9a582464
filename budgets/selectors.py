"""Reads behind the dashboard and caps pages, all scoped to one account.

Everything comes from the rollups (DailyUsage, RunDailyUsage), which Celery refreshes
every minute for today, plus the records stamped after today's rollup read the day
(`DailyUsage.records_through`), aggregated live: a minute or so of records rather than a
scan of the whole day or month. A record that settles late (a long stream, stamped when
it started) waits for the next rollup, so today's numbers are never more than a minute
stale; if the rollup stops, only such late records are missing. Every figure is in
micro-dollars and every window is in the account's time zone.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, F, Q, QuerySet, Sum
from django.utils import timezone

from accounts.models import Account
from keys.models import ApiKey

from .display import percent
from .models import Cap, DailyUsage, RunDailyUsage, RunMonthlyUsage, UsageRecord
from .rollups import local_day_bounds
from .services import canonical_model

CHART_PERIODS = (7, 30, 90)
DEFAULT_CHART_DAYS = 30
RECENT_PAGE_SIZE = 25
# Runs per IN list when top runs look up the month rows of runs with live spend.
LOOKUP_BATCH = 500


@dataclass(frozen=True)
class Window:
    """The account's local calendar around `now`."""

    tz_name: str
    now: dt.datetime
    today: dt.date
    today_start: dt.datetime
    tomorrow_start: dt.datetime
    month_first: dt.date
    next_month_start: dt.datetime

    @classmethod
    def for_account(cls, account: Account, now: dt.datetime | None = None) -> Window:
        now = now or timezone.now()
        tz = account.tz
        today = now.astimezone(tz).date()
        start, end = local_day_bounds(tz, today)
        month_first = today.replace(day=1)
        next_first = (month_first + dt.timedelta(days=32)).replace(day=1)
        return cls(
            tz_name=account.timezone,
            now=now,
            today=today,
            today_start=start,
            tomorrow_start=end,
            month_first=month_first,
            next_month_start=dt.datetime.combine(next_first, dt.time.min, tzinfo=tz),
        )


@dataclass
class Totals:
    cost_micros: int = 0
    saved_micros: int = 0
    requests: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, other: Totals) -> None:
        self.cost_micros += other.cost_micros
        self.saved_micros += other.saved_micros
        self.requests += other.requests
        self.cache_hits += other.cache_hits
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens

    @property
    def hit_rate(self) -> int:
        return percent(self.cache_hits, self.requests)


Bucket = tuple[int, str]  # (api key id or 0, model)


@dataclass
class UsageSnapshot:
    """Today's and this month's usage per (key, model): a handful of small queries feed
    every header number, both breakdown tables and the cap progress."""

    window: Window
    today: dict[Bucket, Totals] = field(default_factory=dict)
    month: dict[Bucket, Totals] = field(default_factory=dict)
    # Today's rollup covers the records stamped up to here; later ones were counted live.
    # None: today has no usable rollup yet and all of it was counted live.
    rolled_through: dt.datetime | None = None

    def total(self, which: str) -> Totals:
        out = Totals()
        for t in getattr(self, which).values():
            out.add(t)
        return out


# The names _totals_from reads, and the DailyUsage columns behind them.
DAILY_COLUMNS = {
    "cost": "cost_micros",
    "saved": "saved_micros",
    "n": "requests",
    "hits": "cache_hits",
    "tin": "input_tokens",
    "tout": "output_tokens",
}


def _totals_from(row: Mapping[str, Any]) -> Totals:
    return Totals(
        cost_micros=int(row["cost"] or 0),
        saved_micros=int(row["saved"] or 0),
        requests=int(row["n"] or 0),
        cache_hits=int(row["hits"] or 0),
        input_tokens=int(row["tin"] or 0),
        output_tokens=int(row["tout"] or 0),
    )


def _today_after(
    account: Account, window: Window, through: dt.datetime | None
) -> QuerySet[UsageRecord]:
    """Today's records the rollup has not read: those stamped after its watermark (the
    whole day when there is none). One range of the (account, created_at) index."""
    records = UsageRecord.objects.filter(
        account=account,
        created_at__gte=window.today_start,
        created_at__lt=window.tomorrow_start,
    )
    return records if through is None else records.filter(created_at__gt=through)


def today_usage(
    *, account: Account, window: Window
) -> tuple[dict[Bucket, Totals], dt.datetime | None]:
    """Today per (key, model), and the watermark of the rollup it used (or None).

    Rows written without a watermark (before it existed) are ignored, and today counted
    live: adding records after an unknown point could count some twice.
    """
    rolled = list(
        DailyUsage.objects.filter(account=account, day=window.today).values(
            "api_key_id_or_zero",
            "model",
            "records_through",
            **{name: F(column) for name, column in DAILY_COLUMNS.items()},
        )
    )
    out: dict[Bucket, Totals] = defaultdict(Totals)
    marks = [r["records_through"] for r in rolled]
    through = None
    if marks and None not in marks:
        through = max(m for m in marks if m is not None)  # the same on every row of a day
        for rolled_row in rolled:
            bucket = (rolled_row["api_key_id_or_zero"], rolled_row["model"])
            out[bucket].add(_totals_from(rolled_row))
    live = (
        _today_after(account, window, through)
        .values("api_key_id", "model")
        .annotate(
            cost=Sum("cost_micros"),
            saved=Sum("saved_micros"),
            n=Count("id"),
            hits=Count("id", filter=Q(cache_status=UsageRecord.CacheStatus.HIT)),
            tin=Sum("input_tokens"),
            tout=Sum("output_tokens"),
        )
        .order_by()
    )
    for row in live:
        out[(row["api_key_id"] or 0, row["model"])].add(_totals_from(row))
    return dict(out), through


def usage_snapshot(*, account: Account, now: dt.datetime | None = None) -> UsageSnapshot:
    window = Window.for_account(account, now)
    today, through = today_usage(account=account, window=window)
    rows = (
        DailyUsage.objects.filter(
            account=account, day__gte=window.month_first, day__lt=window.today
        )
        .values("api_key_id_or_zero", "model")
        .annotate(**{name: Sum(column) for name, column in DAILY_COLUMNS.items()})
        .order_by()
    )
    month: dict[Bucket, Totals] = defaultdict(Totals)
    for row in rows:
        month[(row["api_key_id_or_zero"], row["model"])].add(_totals_from(row))
    for bucket, totals in today.items():
        month[bucket].add(totals)
    return UsageSnapshot(window=window, today=today, month=dict(month), rolled_through=through)


# --- Caps against spend -------------------------------------------------------------------


@dataclass(frozen=True)
class CapProgress:
    cap: Cap
    spent_micros: int
    resets_at: dt.datetime | None

    @property
    def percent(self) -> int:
        return percent(self.spent_micros, self.cap.limit_micros) if self.cap.limit_micros else 100

    @property
    def bar_percent(self) -> int:
        return min(self.percent, 100)

    @property
    def level(self) -> str:
        """CSS level of the progress bar: amber from 80 %, red from 100 %."""
        if self.percent >= 100:
            return "bad"
        if self.percent >= 80:
            return "warn"
        return "ok"

    @property
    def reached(self) -> bool:
        return self.spent_micros >= self.cap.limit_micros

    @property
    def label(self) -> str:
        return self.cap.label


def _cap_matches(cap: Cap, bucket: Bucket) -> bool:
    key_id, model = bucket
    if cap.scope == Cap.Scope.ACCOUNT:
        return True
    if cap.scope == Cap.Scope.KEY:
        return key_id == cap.api_key_id
    if cap.scope == Cap.Scope.MODEL:
        # The ledger counts a request against a model cap by canonical name (dated
        # snapshots and any case: gpt-4o-2024-08-06 and GPT-4o count against gpt-4o), so
        # the progress shown must too, or an enforced cap shows as barely used.
        return canonical_model(model) == canonical_model(cap.model) and (
            cap.api_key_id is None or key_id == cap.api_key_id
        )
    return False


def cap_progress(*, account: Account, snapshot: UsageSnapshot) -> list[CapProgress]:
    """Every cap of the account with what its current window has recorded."""
    caps = (
        Cap.objects.filter(account=account)
        .select_related("api_key")
        .order_by("scope", "period", "model", "created_at")
    )
    out = []
    for cap in caps:
        if cap.period == Cap.Period.DAY:
            buckets, resets = snapshot.today, snapshot.window.tomorrow_start
        elif cap.period == Cap.Period.MONTH:
            buckets, resets = snapshot.month, snapshot.window.next_month_start
        else:
            out.append(CapProgress(cap=cap, spent_micros=0, resets_at=None))
            continue
        spent = sum(t.cost_micros for b, t in buckets.items() if _cap_matches(cap, b))
        out.append(CapProgress(cap=cap, spent_micros=spent, resets_at=resets))
    return out


# --- Header ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    today: Totals
    month: Totals
    day_cap: CapProgress | None
    month_cap: CapProgress | None


def header_numbers(*, snapshot: UsageSnapshot, caps: list[CapProgress]) -> Header:
    def account_cap(period: str) -> CapProgress | None:
        for p in caps:
            if p.cap.scope == Cap.Scope.ACCOUNT and p.cap.period == period:
                return p
        return None

    return Header(
        today=snapshot.total("today"),
        month=snapshot.total("month"),
        day_cap=account_cap(Cap.Period.DAY),
        month_cap=account_cap(Cap.Period.MONTH),
    )


# --- Breakdown tables -----------------------------------------------------------------------


@dataclass(frozen=True)
class RunRow:
    run_id: str
    cost: int = 0
    saved: int = 0
    n: int = 0

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RunRow:
        return cls(
            run_id=row["run_id"],
            cost=int(row["cost"] or 0),
            saved=int(row["saved"] or 0),
            n=int(row["n"] or 0),
        )

    def plus(self, other: RunRow) -> RunRow:
        return RunRow(
            run_id=self.run_id,
            cost=self.cost + other.cost,
            saved=self.saved + other.saved,
            n=self.n + other.n,
        )

    def minus(self, other: RunRow) -> RunRow:
        return RunRow(
            run_id=self.run_id,
            cost=self.cost - other.cost,
            saved=self.saved - other.saved,
            n=self.n - other.n,
        )


@dataclass(frozen=True)
class Row:
    label: str
    totals: Totals
    public_id: str = ""


def _key_names(account: Account) -> dict[int, ApiKey]:
    return {k.pk: k for k in ApiKey.objects.filter(account=account)}


def spend_by_key(*, account: Account, snapshot: UsageSnapshot) -> list[Row]:
    keys = _key_names(account)
    grouped: dict[int, Totals] = defaultdict(Totals)
    for (key_id, _model), totals in snapshot.month.items():
        grouped[key_id].add(totals)
    rows = []
    for key_id, totals in grouped.items():
        key = keys.get(key_id)
        rows.append(
            Row(
                label=key.name if key else "(deleted key)",
                totals=totals,
                public_id=str(key.public_id) if key else "",
            )
        )
    return sorted(rows, key=lambda r: -r.totals.cost_micros)


def spend_by_model(*, snapshot: UsageSnapshot) -> list[Row]:
    grouped: dict[str, Totals] = defaultdict(Totals)
    for (_key, model), totals in snapshot.month.items():
        grouped[model].add(totals)
    rows = [Row(label=model, totals=t) for model, t in grouped.items()]
    return sorted(rows, key=lambda r: -r.totals.cost_micros)


def top_runs(*, account: Account, snapshot: UsageSnapshot, limit: int = 10) -> list[RunRow]:
    """The month's most expensive agent runs (requests tagged with a run id): the run
    rollup's month rows, plus today's records the rollup has not read yet."""
    window = snapshot.window
    through = snapshot.rolled_through
    # What to add to (or take from) a run's month row.
    change: dict[str, RunRow] = {
        row["run_id"]: RunRow.from_row(row)
        for row in _today_after(account, window, through)
        .exclude(run_id="")
        .values("run_id")
        .annotate(cost=Sum("cost_micros"), saved=Sum("saved_micros"), n=Count("id"))
        .order_by()
    }
    if through is None:
        # Today counted live (see today_usage): take out any run rows a rollup wrote for
        # today under a watermark we cannot see, rather than count them twice.
        for row in RunDailyUsage.objects.filter(account=account, day=window.today).values(
            "run_id", cost=F("cost_micros"), saved=F("saved_micros"), n=F("requests")
        ):
            run_id = row["run_id"]
            change[run_id] = change.get(run_id, RunRow(run_id)).minus(RunRow.from_row(row))
    month = RunMonthlyUsage.objects.filter(account=account, month=window.month_first).values_list(
        "run_id", "cost_micros", "saved_micros", "requests"
    )
    # Only a run whose spend goes down can leave the month's top `limit` and let the next
    # one in, so the answer is among the first `limit + lowered` rows (read in index
    # order: usually just `limit`) and the changed runs.
    lowered = sum(1 for delta in change.values() if delta.cost < 0)
    runs = {
        row[0]: RunRow(*row) for row in month.order_by("-cost_micros", "run_id")[: limit + lowered]
    }
    missing = sorted(run_id for run_id in change if run_id not in runs)
    for i in range(0, len(missing), LOOKUP_BATCH):
        for found in month.filter(run_id__in=missing[i : i + LOOKUP_BATCH]):
            runs[found[0]] = RunRow(*found)
    for run_id, delta in change.items():
        runs[run_id] = runs.get(run_id, RunRow(run_id)).plus(delta)
    ranked = sorted((r for r in runs.values() if r.n > 0), key=lambda r: (-r.cost, r.run_id))
    return ranked[:limit]


def recent_requests(*, account: Account, page: int) -> tuple[list[UsageRecord], bool]:
    """One page of the newest requests, and whether an older page exists (no COUNT over
    millions of rows: fetch one extra)."""
    offset = (page - 1) * RECENT_PAGE_SIZE
    rows = list(
        UsageRecord.objects.filter(account=account)
        .select_related("api_key")
        .order_by("-created_at", "-id")[offset : offset + RECENT_PAGE_SIZE + 1]
    )
    return rows[:RECENT_PAGE_SIZE], len(rows) > RECENT_PAGE_SIZE


# --- Charts ---------------------------------------------------------------------------------


def chart_data(
    *, account: Account, days: int, snapshot: UsageSnapshot | None = None
) -> dict[str, Any]:
    """Spend per local day stacked by model, and $ saved per day, for the last `days`
    days including today. Amounts in dollars (floats are for drawing only)."""
    from .display import usd_float

    window = snapshot.window if snapshot else Window.for_account(account)
    first = window.today - dt.timedelta(days=days - 1)
    labels = [first + dt.timedelta(days=i) for i in range(days)]
    index = {d: i for i, d in enumerate(labels)}
    by_model: dict[str, list[int]] = defaultdict(lambda: [0] * days)
    saved = [0] * days
    rows = (
        DailyUsage.objects.filter(account=account, day__gte=first, day__lt=window.today)
        .values("day", "model")
        .annotate(cost=Sum("cost_micros"), saved=Sum("saved_micros"))
        .order_by()
    )
    for row in rows:
        i = index[row["day"]]
        by_model[row["model"]][i] += row["cost"] or 0
        saved[i] += row["saved"] or 0
    today = snapshot.today if snapshot else today_usage(account=account, window=window)[0]
    last = days - 1
    for (_key, model), totals in today.items():
        by_model[model][last] += totals.cost_micros
        saved[last] += totals.saved_micros
    models_sorted = sorted(by_model, key=lambda m: -sum(by_model[m]))
    total_cost = sum(sum(v) for v in by_model.values())
    return {
        "days": days,
        "labels": [d.isoformat() for d in labels],
        "spend": [{"model": m, "usd": [usd_float(v) for v in by_model[m]]} for m in models_sorted],
        "saved": [usd_float(v) for v in saved],
        "total_cost_micros": total_cost,
        "total_saved_micros": sum(saved),
        "empty": total_cost == 0 and sum(saved) == 0,
    }


def has_usage(*, account: Account) -> bool:
    return UsageRecord.objects.filter(account=account).exists()
