from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms

from accounts.models import Account
from keys.models import ApiKey

from .caps import DEFAULT_THRESHOLDS, CapSpec
from .model_prices import MAX_OUTPUT_TOKENS_LIMIT, ModelPriceSpec
from .models import MICROS_PER_USD, Cap


def usd_to_micros(value: Decimal) -> int:
    # Caps are typed in dollars; round DOWN to the micro-dollar so a cap is never
    # looser than what the user typed.
    return int((value * MICROS_PER_USD).to_integral_value(rounding="ROUND_FLOOR"))


class CapForm(forms.Form):
    scope = forms.ChoiceField(choices=Cap.Scope.choices, initial=Cap.Scope.ACCOUNT)
    period = forms.ChoiceField(choices=Cap.Period.choices, initial=Cap.Period.MONTH)
    api_key = forms.ModelChoiceField(
        queryset=ApiKey.objects.none(),
        required=False,
        to_field_name="public_id",
        empty_label="(any key)",
    )
    model = forms.CharField(max_length=100, required=False)
    limit_usd = forms.DecimalField(
        label="Limit (USD)", min_value=Decimal("0.000001"), max_digits=14, decimal_places=6
    )
    thresholds = forms.CharField(
        label="Alert at (%)",
        initial=", ".join(str(t) for t in DEFAULT_THRESHOLDS),
        required=False,
        help_text="Comma-separated percentages of the cap.",
    )

    def __init__(self, *args: Any, account: Account, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["api_key"]
        field.queryset = ApiKey.objects.filter(  # type: ignore[attr-defined]
            account=account, revoked_at__isnull=True
        ).order_by("name")
        field.label_from_instance = lambda key: key.name  # type: ignore[attr-defined]

    def clean_thresholds(self) -> list[int]:
        raw = self.cleaned_data.get("thresholds") or ""
        if not raw.strip():
            return list(DEFAULT_THRESHOLDS)
        try:
            return [int(part) for part in raw.replace(";", ",").split(",") if part.strip()]
        except ValueError:
            raise forms.ValidationError("Use whole percentages, e.g. 50, 80, 100.") from None

    def spec(self) -> CapSpec:
        data = self.cleaned_data
        try:
            limit = usd_to_micros(data["limit_usd"])
        except (InvalidOperation, TypeError):  # pragma: no cover - the field validated it
            limit = 0
        return CapSpec(
            scope=data["scope"],
            period=data["period"],
            limit_micros=limit,
            api_key=data.get("api_key"),
            model=data.get("model") or "",
            alert_thresholds=tuple(data["thresholds"]),
        )


def _rate_micros(value: Decimal) -> int:
    # Prices are typed in dollars per million tokens; round UP to the micro-dollar so a
    # request is never priced below what the user typed (caps stay conservative).
    return int((value * MICROS_PER_USD).to_integral_value(rounding="ROUND_CEILING"))


def _rate_field(label: str, *, required: bool = True) -> forms.DecimalField:
    return forms.DecimalField(
        label=label, required=required, min_value=Decimal(0), max_digits=12, decimal_places=6
    )


class ModelPriceForm(forms.Form):
    model = forms.CharField(max_length=100, help_text="Exactly as in your requests.")
    input_usd = _rate_field("Input ($ per 1M tokens)")
    cached_input_usd = _rate_field("Cached input ($ per 1M tokens)", required=False)
    output_usd = _rate_field("Output ($ per 1M tokens)")
    max_output_tokens = forms.IntegerField(
        label="Longest answer (tokens)",
        initial=16_384,
        min_value=1,
        max_value=MAX_OUTPUT_TOKENS_LIMIT,
        help_text="The model's own output limit, or less: written into requests that name none.",
    )

    def spec(self) -> ModelPriceSpec:
        data = self.cleaned_data
        cached = data.get("cached_input_usd")
        return ModelPriceSpec(
            model=data["model"],
            input_micros_per_mtok=_rate_micros(data["input_usd"]),
            output_micros_per_mtok=_rate_micros(data["output_usd"]),
            cached_input_micros_per_mtok=None if cached is None else _rate_micros(cached),
            max_output_tokens=data["max_output_tokens"],
        )


class ProviderKeyForm(forms.Form):
    raw_key = forms.CharField(
        label="OpenAI API key",
        widget=forms.PasswordInput(attrs={"placeholder": "sk-…", "autocomplete": "off"}),
        max_length=300,
    )


class ApiKeyForm(forms.Form):
    name = forms.CharField(label="Key name", max_length=100, initial="my-app")


class MonthlyCapForm(forms.Form):
    limit_usd = forms.DecimalField(
        label="Monthly cap (USD)", min_value=Decimal("0.01"), max_digits=14, decimal_places=2
    )
