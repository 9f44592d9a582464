from __future__ import annotations

from django import template

from budgets.display import format_usd

register = template.Library()


@register.filter
def usd(micros: int | None) -> str:
    """Micro-dollars as dollars with sensible precision: {{ row.cost_micros|usd }}."""
    return format_usd(micros)
