from __future__ import annotations

from decimal import Decimal

from django import template

from budgets.display import format_usd
from budgets.models import MICROS_PER_USD

register = template.Library()


@register.filter
def usd(micros: int | None) -> str:
    """Micro-dollars as dollars with sensible precision: {{ row.cost_micros|usd }}."""
    return format_usd(micros)


@register.filter
def usd_rate(micros: int | None) -> str:
    """A price per million tokens, exactly as stored: {{ price.input_micros_per_mtok|usd_rate }}
    ($0.075, not the cents `usd` rounds a spend to)."""
    if micros is None:
        return "—"
    return f"${(Decimal(micros) / MICROS_PER_USD).normalize():f}"
