"""Cap rules: what a valid cap is, and creating, changing and deleting caps.

The ledger reads Cap rows when it admits a request. A process may cache an account's
caps, but every save or delete here bumps the account's caps version (budgets.signals),
so a change takes effect on the very next proxied request.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from accounts.models import Account, User
from billing.entitlements import entitlements_for
from keys.models import ApiKey

from .display import format_usd
from .models import MICROS_PER_USD, Cap
from .services import canonical_model

DEFAULT_THRESHOLDS = [50, 80, 100]
# Onboarding's prefilled monthly cap: enough to build with, small enough to be a real stop.
SUGGESTED_MONTHLY_CAP_MICROS = 50 * MICROS_PER_USD

# Which periods each scope allows: run caps bound one agent run, whatever it takes.
_PERIODS = {
    Cap.Scope.ACCOUNT: {Cap.Period.DAY, Cap.Period.MONTH},
    Cap.Scope.KEY: {Cap.Period.DAY, Cap.Period.MONTH},
    Cap.Scope.MODEL: {Cap.Period.DAY, Cap.Period.MONTH},
    Cap.Scope.RUN: {Cap.Period.RUN},
}


class FieldInvalid(Exception):
    """A value the user typed that we refuse; `field` names the form field at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class CapInvalid(FieldInvalid):
    """A cap the user asked for that we refuse."""


@dataclass(frozen=True)
class CapSpec:
    scope: str
    period: str
    limit_micros: int
    api_key: ApiKey | None = None
    model: str = ""
    alert_thresholds: tuple[int, ...] = tuple(DEFAULT_THRESHOLDS)


def suggested_monthly_cap_micros(*, account: Account) -> int:
    ceiling = entitlements_for(account).max_monthly_cap_micros
    if ceiling is None:
        return SUGGESTED_MONTHLY_CAP_MICROS
    return min(SUGGESTED_MONTHLY_CAP_MICROS, ceiling)


def cap_validate(*, account: Account, spec: CapSpec) -> None:
    if spec.scope not in _PERIODS:
        raise CapInvalid("Choose what the cap applies to.", field="scope")
    if spec.period not in _PERIODS[spec.scope]:  # type: ignore[index]
        allowed = " or ".join(sorted(_PERIODS[spec.scope]))  # type: ignore[index]
        raise CapInvalid(f"A {spec.scope} cap is {allowed}.", field="period")
    if spec.limit_micros <= 0:
        raise CapInvalid("Enter an amount above $0.", field="limit_usd")
    if spec.api_key is not None and spec.api_key.account_id != account.pk:
        raise CapInvalid("Choose one of your keys.", field="api_key")
    if spec.scope in {Cap.Scope.KEY, Cap.Scope.RUN} and spec.api_key is None:
        raise CapInvalid("Choose the key this cap applies to.", field="api_key")
    if spec.scope == Cap.Scope.MODEL and not spec.model.strip():
        raise CapInvalid("Name the model, for example gpt-4o-mini.", field="model")
    ceiling = entitlements_for(account).max_monthly_cap_micros
    # A day or run cap above the plan's monthly ceiling could never be reached lawfully
    # either, so the ceiling bounds every cap, not only monthly ones.
    if ceiling is not None and spec.limit_micros > ceiling:
        plan = entitlements_for(account).plan.capitalize()
        raise CapInvalid(
            f"The {plan} plan allows caps up to {format_usd(ceiling)}. Upgrade for higher caps.",
            field="limit_usd",
        )
    thresholds = list(spec.alert_thresholds)
    if not thresholds or any(not 1 <= t <= 100 for t in thresholds):
        raise CapInvalid("Alert thresholds are percentages from 1 to 100.", field="thresholds")


def _identity(account: Account, spec: CapSpec) -> dict[str, object]:
    return {
        "account": account,
        "scope": spec.scope,
        "period": spec.period,
        "api_key": spec.api_key if spec.scope != Cap.Scope.ACCOUNT else None,
        "model": spec.model.strip() if spec.scope == Cap.Scope.MODEL else "",
    }


def _refuse_another_name_of_a_capped_model(account: Account, spec: CapSpec) -> None:
    # The ledger counts a model cap by canonical name (budgets.services.canonical_model:
    # letter case and dated snapshots are one model) and applies only the strictest of
    # caps that share it, so a second row for the same model would show a limit that
    # never applies. Point at the cap that does instead.
    model = spec.model.strip()
    wanted = canonical_model(model)
    others = Cap.objects.filter(
        account=account, scope=Cap.Scope.MODEL, period=spec.period, api_key=spec.api_key
    ).exclude(model=model)
    for other in others:
        if canonical_model(other.model) == wanted:
            raise CapInvalid(
                f"A {other.get_period_display().lower()} cap on model {other.model} already "
                f"covers {model} (letter case and dated snapshots count as one model). "
                "Change that cap instead.",
                field="model",
            )


def cap_upsert(*, account: Account, actor: User | None, spec: CapSpec) -> Cap:
    """Create the cap, or change the limit of the cap with the same scope, key, model and
    period (one cap per target and period, so the ledger never has to pick between two)."""
    cap_validate(account=account, spec=spec)
    identity = _identity(account, spec)
    thresholds = sorted(set(spec.alert_thresholds))
    with transaction.atomic():
        # Serialise cap edits per account: two tabs saving at once leave one row.
        Account.objects.select_for_update().filter(pk=account.pk).first()
        cap = Cap.objects.filter(**identity).first()  # type: ignore[arg-type]
        if cap is None and spec.scope == Cap.Scope.MODEL:
            _refuse_another_name_of_a_capped_model(account, spec)
        if cap is None:
            return Cap.objects.create(
                **identity,  # type: ignore[arg-type]
                limit_micros=spec.limit_micros,
                alert_thresholds=thresholds,
            )
        cap.limit_micros = spec.limit_micros
        cap.alert_thresholds = thresholds
        cap.save(update_fields=["limit_micros", "alert_thresholds"])
        return cap


def cap_delete(*, cap: Cap, actor: User | None) -> None:
    cap.delete()
