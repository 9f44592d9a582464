from __future__ import annotations

from django import template

from billing.services import micros_format, money_format

register = template.Library()


@register.filter
def money(amount_minor: int, currency: str) -> str:
    """`{{ payment.amount_minor|money:payment.currency }}` → "₹1,599"."""
    return money_format(int(amount_minor), str(currency))


@register.filter
def usd_micros(micros: int | None) -> str:
    return "unlimited" if micros is None else micros_format(int(micros))
