"""Forms of the alerts settings page; validation rules live in `budgets.alerts`."""

from __future__ import annotations

from decimal import Decimal

from django import forms

from .models import MICROS_PER_USD, AlertChannel


class AlertChannelForm(forms.Form):
    kind = forms.ChoiceField(choices=AlertChannel.Kind.choices)
    target = forms.CharField(
        max_length=500,
        label="Email address or webhook URL",
        widget=forms.TextInput(
            attrs={"placeholder": "you@example.com or https://hooks.slack.com/…"}
        ),
    )


class SpikeBreakerForm(forms.Form):
    enabled = forms.BooleanField(required=False)
    window_minutes = forms.IntegerField(min_value=1, max_value=120, required=False)
    multiplier = forms.IntegerField(min_value=2, max_value=1000, required=False)
    floor_usd = forms.DecimalField(
        min_value=Decimal("0.01"), max_value=Decimal(100_000), decimal_places=2, required=False
    )

    def window_seconds(self) -> int | None:
        minutes = self.cleaned_data.get("window_minutes")
        return None if minutes is None else minutes * 60

    def floor_micros(self) -> int | None:
        floor = self.cleaned_data.get("floor_usd")
        return None if floor is None else int(floor * MICROS_PER_USD)
