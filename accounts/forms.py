from __future__ import annotations

from typing import Any

from django import forms

from .models import User, normalise_email
from .services import timezone_is_valid


class LoginForm(forms.Form):
    """The one form for signing up and signing in."""

    email = forms.EmailField(
        max_length=254,
        widget=forms.EmailInput(
            attrs={"autocomplete": "email", "autofocus": True, "placeholder": "you@example.com"}
        ),
    )
    # Filled by static/js/timezone.js from the browser; used only when creating a user.
    timezone = forms.CharField(
        required=False, max_length=64, widget=forms.HiddenInput(attrs={"data-browser-tz": ""})
    )
    next = forms.CharField(required=False, max_length=2000, widget=forms.HiddenInput)

    def clean_email(self) -> str:
        return normalise_email(self.cleaned_data["email"])

    def clean_timezone(self) -> str:
        name = self.cleaned_data["timezone"].strip()
        # An odd value from the browser is not the user's fault: fall back quietly.
        return name if timezone_is_valid(name) else "UTC"


class TimezoneForm(forms.Form):
    timezone = forms.CharField(
        label="Time zone",
        max_length=64,
        help_text="An IANA name such as Europe/Berlin or Asia/Kolkata. Daily and monthly "
        "caps reset at midnight in this zone.",
        widget=forms.TextInput(attrs={"list": "timezone-names", "autocomplete": "off"}),
    )

    def clean_timezone(self) -> str:
        name = self.cleaned_data["timezone"].strip()
        if not timezone_is_valid(name):
            raise forms.ValidationError(
                f"“{name}” is not a time zone we know. Use an IANA name like Europe/Berlin."
            )
        return name


class DeleteAccountForm(forms.Form):
    confirm_email = forms.CharField(
        label="Type your email address to confirm",
        max_length=254,
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_confirm_email(self) -> str:
        typed = normalise_email(self.cleaned_data["confirm_email"])
        if typed != self.user.email:
            raise forms.ValidationError("That is not your email address; nothing was deleted.")
        return typed
