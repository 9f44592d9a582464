"""Business numbers for the staff page (the north star: $ saved per user per month)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Q, Sum
from django.utils import timezone

from accounts.models import Account, User
from billing.entitlements import GRANTING_STATUSES, PLAN_ORDER
from billing.models import Subscription
from budgets.models import UsageRecord


@dataclass(frozen=True)
class AccountSavings:
    account_public_id: str
    name: str
    saved_micros: int
    cost_micros: int
    requests: int
    cache_hits: int


@dataclass(frozen=True)
class BusinessNumbers:
    signups_total: int
    signups_7d: int
    signups_30d: int
    weekly_active_accounts: int
    requests_7d: int
    requests_30d: int
    cache_hits_30d: int
    spend_30d_micros: int
    saved_30d_micros: int
    active_accounts_30d: int
    # The north star: $ saved by the cache per active account over the last 30 days.
    saved_per_account_month_micros: int
    top_savers: list[AccountSavings]
    paid_accounts_by_plan: dict[str, int]

    @property
    def cache_hit_rate_percent(self) -> float:
        return 100.0 * self.cache_hits_30d / self.requests_30d if self.requests_30d else 0.0


def _paid_accounts_by_plan(now: dt.datetime) -> dict[str, int]:
    """Accounts per paid plan, by the same rule as entitlements.plan_for, in one query."""
    best: dict[int, str] = {}
    rows = Subscription.objects.filter(status__in=GRANTING_STATUSES).values_list(
        "account_id", "plan", "cancel_at_period_end", "current_period_end"
    )
    for account_id, plan, cancelling, period_end in rows:
        if cancelling and period_end is not None and period_end <= now:
            continue
        if plan in PLAN_ORDER and PLAN_ORDER.index(plan) > PLAN_ORDER.index(
            best.get(account_id, "free")
        ):
            best[account_id] = plan
    counts = {plan: 0 for plan in PLAN_ORDER if plan != "free"}
    for plan in best.values():
        counts[plan] += 1
    return counts


def business_numbers(*, now: dt.datetime | None = None, top: int = 25) -> BusinessNumbers:
    now = now or timezone.now()
    week, month = now - dt.timedelta(days=7), now - dt.timedelta(days=30)
    users = User.objects.aggregate(
        total=Count("id"),
        week=Count("id", filter=Q(date_joined__gte=week)),
        month=Count("id", filter=Q(date_joined__gte=month)),
    )
    recent = UsageRecord.objects.filter(created_at__gte=month)
    totals = recent.aggregate(
        requests=Count("id"),
        requests_7d=Count("id", filter=Q(created_at__gte=week)),
        hits=Count("id", filter=Q(cache_status=UsageRecord.CacheStatus.HIT)),
        spend=Sum("cost_micros"),
        saved=Sum("saved_micros"),
        accounts=Count("account_id", distinct=True),
        accounts_7d=Count("account_id", distinct=True, filter=Q(created_at__gte=week)),
    )
    per_account = list(
        recent.values("account_id")
        .annotate(
            saved=Sum("saved_micros"),
            cost=Sum("cost_micros"),
            n=Count("id"),
            hits=Count("id", filter=Q(cache_status=UsageRecord.CacheStatus.HIT)),
        )
        .order_by("-saved", "account_id")[:top]
    )
    names = Account.objects.in_bulk([row["account_id"] for row in per_account])
    active = int(totals["accounts"] or 0)
    saved = int(totals["saved"] or 0)
    return BusinessNumbers(
        signups_total=users["total"],
        signups_7d=users["week"],
        signups_30d=users["month"],
        weekly_active_accounts=int(totals["accounts_7d"] or 0),
        requests_7d=int(totals["requests_7d"] or 0),
        requests_30d=int(totals["requests"] or 0),
        cache_hits_30d=int(totals["hits"] or 0),
        spend_30d_micros=int(totals["spend"] or 0),
        saved_30d_micros=saved,
        active_accounts_30d=active,
        saved_per_account_month_micros=saved // active if active else 0,
        top_savers=[
            AccountSavings(
                account_public_id=str(names[row["account_id"]].public_id),
                name=str(names[row["account_id"]]),
                saved_micros=int(row["saved"] or 0),
                cost_micros=int(row["cost"] or 0),
                requests=int(row["n"]),
                cache_hits=int(row["hits"]),
            )
            for row in per_account
            if row["account_id"] in names
        ],
        paid_accounts_by_plan=_paid_accounts_by_plan(now),
    )
