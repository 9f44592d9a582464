"""What an account may do now: the one place keys, caps, alerts and history ask.

The billing app keeps the plan in sync with payment providers; everything else reads
`entitlements_for(account)` and never looks at plans or subscriptions directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.utils import timezone

from accounts.models import Account


@dataclass(frozen=True)
class Entitlements:
    plan: str
    max_provider_keys: int
    max_api_keys: int
    # None = unlimited.
    max_monthly_cap_micros: int | None
    history_days: int
    alert_channels: frozenset[str]
    team_members: bool

    @property
    def alert_channels_display(self) -> str:
        """ "Email, Slack, Discord": email first, in the words people use."""
        names = {"email": "Email", "slack": "Slack", "discord": "Discord"}
        ordered = sorted(self.alert_channels, key=lambda c: (c != "email", c != "slack", c))
        return ", ".join(names.get(c, c.title()) for c in ordered)


PLANS: dict[str, Entitlements] = {
    "free": Entitlements("free", 1, 1, 100_000_000, 7, frozenset({"email"}), False),
    "pro": Entitlements("pro", 5, 5, None, 90, frozenset({"email", "slack", "discord"}), False),
    "team": Entitlements("team", 20, 20, None, 90, frozenset({"email", "slack", "discord"}), True),
}


PLAN_ORDER = ("free", "pro", "team")

# Statuses in which a paid subscription grants its plan. PENDING keeps it while the
# provider retries a failed renewal; HALTED and later take it away.
GRANTING_STATUSES = frozenset({"authenticated", "active", "pending"})


def plan_rank(plan: str) -> int:
    return PLAN_ORDER.index(plan)


def plan_for(account: Account) -> str:
    """The account's current plan code, read from its subscriptions (free when none grants).

    Read on every check (no caching) so a plan change applies at once.
    """
    from .models import Subscription

    now = timezone.now()
    best = "free"
    rows = Subscription.objects.filter(account=account, status__in=GRANTING_STATUSES).values_list(
        "plan", "cancel_at_period_end", "current_period_end"
    )
    for plan, cancelling, period_end in rows:
        if cancelling and period_end is not None and period_end <= now:
            continue  # cancelled at period end, and the period has ended
        if plan in PLANS and plan_rank(plan) > plan_rank(best):
            best = plan
    return best


def entitlements_for(account: Account) -> Entitlements:
    return PLANS[plan_for(account)]
