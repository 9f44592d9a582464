"""Formatting integer micro-dollars at the edge (messages, JSON, templates)."""

from __future__ import annotations

from decimal import Decimal

MICROS_PER_USD = 1_000_000


def usd_str(micros: int) -> str:
    """Dollars as a decimal string: cents always, more digits only when they matter.

    1_500_000 -> "1.50", 48_712 -> "0.048712", 50_000 -> "0.05".
    """
    text = f"{Decimal(micros) / MICROS_PER_USD:.6f}"
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    return f"{whole}.{frac.ljust(2, '0')}"


def usd(micros: int) -> str:
    """ "$1.50" — for messages a person reads."""
    text = usd_str(abs(micros))
    return f"-${text}" if micros < 0 else f"${text}"
