"""The alerts settings page: channels (email, Slack, Discord), test alerts, the breaker."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.models import Account, User
from accounts.services import account_for_user
from keys.models import ApiKey

from . import alerts
from .alert_forms import AlertChannelForm, SpikeBreakerForm
from .models import MICROS_PER_USD, AlertChannel, SpikeBreaker


def _account(request: HttpRequest) -> Account:
    return account_for_user(cast(User, request.user))


def _page(
    request: HttpRequest,
    account: Account,
    *,
    form: AlertChannelForm | None = None,
    partial: str = "",
    flash: str = "",
) -> HttpResponse:
    allowed = alerts.allowed_channel_kinds(account=account)
    keys = ApiKey.objects.filter(account=account, revoked_at__isnull=True).order_by("created_at")
    breakers = {b.api_key_id: b for b in SpikeBreaker.objects.filter(api_key__account=account)}
    key_rows = []
    for key in keys:
        breaker = breakers.get(key.pk)
        rule = alerts.breaker_rule(breaker=breaker)
        key_rows.append(
            {
                "key": key,
                "rule": rule,
                "window_minutes": max(1, rule.window_seconds // 60),
                "floor_usd": f"{Decimal(rule.floor_micros) / MICROS_PER_USD:.2f}",
            }
        )
    context: dict[str, Any] = {
        "channels": alerts.alert_channels_for(account=account),
        "allowed": allowed,
        "webhooks_locked": not {"slack", "discord"} <= allowed,
        "form": form or AlertChannelForm(),
        "key_rows": key_rows,
        "breaker_on": settings.SPIKE_BREAKER_ENABLED,
        "flash": flash,
    }
    template = "budgets/alerts.html" + (f"#{partial}" if partial else "")
    return render(request, template, context)


def _done(request: HttpRequest, account: Account, text: str) -> HttpResponse:
    if getattr(request, "htmx", False):
        return _page(request, account, partial="channels", flash=text)
    messages.success(request, text)
    return redirect("alerts")


@login_required
def alert_settings(request: HttpRequest) -> HttpResponse:
    return _page(request, _account(request))


@login_required
@require_POST
def alert_channel_add(request: HttpRequest) -> HttpResponse:
    account = _account(request)
    form = AlertChannelForm(request.POST)
    if form.is_valid():
        try:
            alerts.alert_channel_add(
                account=account, kind=form.cleaned_data["kind"], target=form.cleaned_data["target"]
            )
        except alerts.AlertError as exc:
            form.add_error("target", str(exc))
        else:
            return _done(request, account, "Channel added. Send a test alert to check it.")
    return _page(request, account, form=form)


def _channel(request: HttpRequest, public_id: uuid.UUID) -> tuple[Account, AlertChannel]:
    account = _account(request)
    return account, get_object_or_404(AlertChannel, account=account, public_id=public_id)


@login_required
@require_POST
def alert_channel_test(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    account, channel = _channel(request, public_id)
    alerts.alert_send_test(channel=channel)
    return _done(request, account, f"Test alert sent to {channel}.")


@login_required
@require_POST
def alert_channel_toggle(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    account, channel = _channel(request, public_id)
    alerts.alert_channel_set_enabled(channel=channel, enabled=not channel.enabled)
    return _done(request, account, f"{channel} {'enabled' if channel.enabled else 'disabled'}.")


@login_required
@require_POST
def alert_channel_delete(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    account, channel = _channel(request, public_id)
    alerts.alert_channel_remove(channel=channel)
    return _done(request, account, f"{channel} removed.")


@login_required
@require_POST
def spike_breaker_save(request: HttpRequest, key_public_id: uuid.UUID) -> HttpResponse:
    account = _account(request)
    api_key = get_object_or_404(ApiKey, account=account, public_id=key_public_id)
    form = SpikeBreakerForm(request.POST)
    if not form.is_valid():
        messages.error(
            request,
            "Breaker settings: "
            + "; ".join(
                f"{field}: {' '.join(str(e) for e in errs)}" for field, errs in form.errors.items()
            ),
        )
        return _page(request, account)
    alerts.breaker_settings_save(
        api_key=api_key,
        enabled=form.cleaned_data["enabled"],
        window_seconds=form.window_seconds(),
        multiplier=form.cleaned_data.get("multiplier"),
        floor_micros=form.floor_micros(),
    )
    messages.success(request, f"Spend-spike breaker for “{api_key.name}” saved.")
    return redirect("alerts")
