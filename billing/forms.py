from __future__ import annotations

from django import forms


class PlanForm(forms.Form):
    plan = forms.ChoiceField(choices=[("pro", "Pro"), ("team", "Team")])


class RazorpayCheckoutResultForm(forms.Form):
    """What Razorpay Checkout's handler gives the page after a subscription payment."""

    razorpay_payment_id = forms.CharField(max_length=64)
    razorpay_subscription_id = forms.CharField(max_length=64)
    razorpay_signature = forms.CharField(max_length=128)


class KeepKeysForm(forms.Form):
    provider_keys = forms.TypedMultipleChoiceField(required=False, coerce=str)
    api_keys = forms.TypedMultipleChoiceField(required=False, coerce=str)

    def __init__(
        self,
        *args: object,
        provider_choices: list[tuple[str, str]],
        api_choices: list[tuple[str, str]],
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["provider_keys"].choices = provider_choices  # type: ignore[attr-defined]
        self.fields["api_keys"].choices = api_choices  # type: ignore[attr-defined]
