"""Input for the keys page. Forms parse; the services decide."""

from __future__ import annotations

from typing import Any, cast

from django import forms

from accounts.models import Account

from .models import ProviderKey


class ProviderKeyForm(forms.Form):
    # A password input that never renders the value back, so an invalid submission
    # does not put the pasted key into the re-rendered HTML.
    key = forms.CharField(
        label="OpenAI API key",
        max_length=500,
        strip=True,
        widget=forms.PasswordInput(
            render_value=False,
            attrs={"autocomplete": "off", "spellcheck": "false", "placeholder": "sk-…"},
        ),
    )
    name = forms.CharField(label="Label (optional)", max_length=100, required=False)


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        label="Name",
        max_length=100,
        widget=forms.TextInput(attrs={"placeholder": "e.g. production, ci, notebook"}),
    )
    provider_key = forms.ModelChoiceField(
        label="Provider key",
        queryset=ProviderKey.objects.none(),
        to_field_name="public_id",
        empty_label=None,
    )

    def __init__(self, *args: Any, account: Account, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only the account's own usable keys can be chosen: another account's id is
        # "not one of the available choices", never a lookup across accounts.
        field = cast(forms.ModelChoiceField, self.fields["provider_key"])
        field.queryset = ProviderKey.objects.filter(account=account, disabled_at__isnull=True)
