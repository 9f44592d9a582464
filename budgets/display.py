"""Formatting micro-dollars for people. Money stays integer until this edge."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from .models import MICROS_PER_USD

# Below a cent, show two significant digits so a $0.0004 request is not "$0.00".
_TINY = MICROS_PER_USD // 100


def format_usd(micros: int | None) -> str:
    """$1,234.56 · $0.42 · $0.0042 · $0.000003 · $0 (exactly zero only)."""
    if micros is None:
        return "—"
    if micros == 0:
        return "$0"
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    dollars = Decimal(micros) / MICROS_PER_USD
    if micros >= _TINY:
        return f"{sign}${dollars.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"
    # Two significant digits, at most six decimals (one micro-dollar).
    exponent = dollars.adjusted()  # e.g. -3 for 0.0042
    places = min(6, -exponent + 1)
    rounded = dollars.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    if rounded >= Decimal("0.01"):  # 0.009999 rounds up into cents
        return f"{sign}$0.01"
    return f"{sign}${rounded.normalize():f}"


def usd_float(micros: int) -> float:
    """Dollars as a float, for chart axes only (never for arithmetic)."""
    return round(micros / MICROS_PER_USD, 6)


def percent(part: int, whole: int) -> int:
    """Whole percent of `whole`, 0 when there is no whole (floor, so 99.9 % is not 100 %)."""
    if whole <= 0:
        return 0
    return int(part * 100 // whole)
