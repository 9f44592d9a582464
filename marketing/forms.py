from __future__ import annotations

from django import forms


class WaitlistForm(forms.Form):
    email = forms.EmailField(
        label="Email", widget=forms.EmailInput(attrs={"placeholder": "you@example.com"})
    )
