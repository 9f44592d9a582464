"""What an account may do now: the one place keys, caps, alerts and history ask.

The billing app keeps the plan in sync with payment providers; everything else reads
`entitlements_for(account)` and never looks at plans or subscriptions directly.
"""

from __future__ import annotations

from dataclasses import dataclass

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


PLANS: dict[str, Entitlements] = {
    "free": Entitlements("free", 1, 1, 100_000_000, 7, frozenset({"email"}), False),
    "pro": Entitlements("pro", 5, 5, None, 90, frozenset({"email", "slack", "discord"}), False),
    "team": Entitlements("team", 20, 20, None, 90, frozenset({"email", "slack", "discord"}), True),
}


def plan_for(account: Account) -> str:
    """The account's current plan code. Billing replaces this with the subscription state."""
    return "free"


def entitlements_for(account: Account) -> Entitlements:
    return PLANS[plan_for(account)]
