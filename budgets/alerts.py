"""Threshold alerts, alert channels and the spend-spike breaker.

Flow: after a settle the ledger calls `alerts_check(account_id=...)`, which enqueues one
(debounced) Celery task per account. The task runs `alerts_evaluate`, which

1. for every cap with thresholds, claims each newly crossed (cap, window, threshold) by
   INSERTing an `AlertFired` row — the unique constraint lets exactly one worker win —
   and sends one alert naming the highest threshold it claimed;
2. runs the spend-spike breaker over the account's keys and pauses a runaway key.

Sending is one Celery task per channel (`alert_deliver_task`), retried with exponential
backoff on transient failures, so a broken Slack webhook never holds up the email.

Webhook URLs are checked twice: when saved (https, the provider's host and path) and
again before every send, when the host is resolved and every address must be public; the
connection then goes to that checked address (no second DNS lookup an attacker could
rebind), and redirects are never followed.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import re
import socket
import ssl
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.cache import cache
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.urls import reverse
from django.utils import timezone

from accounts.models import Account, Membership
from billing.entitlements import entitlements_for
from keys.models import ApiKey, KeyAuditEvent

from . import services
from .models import MICROS_PER_USD, AlertChannel, AlertFired, Cap, SpikeBreaker, UsageRecord
from .windows import window_for

logger = logging.getLogger(__name__)


# --- Errors -------------------------------------------------------------------------------


class AlertError(Exception):
    """A user-facing problem with an alert channel; the message says what to fix."""


class WebhookUrlInvalid(AlertError):
    pass


class ChannelNotAllowed(AlertError):
    pass


class TestAlertTooSoon(AlertError):
    pass


class DeliveryError(Exception):
    """A channel could not be reached. `retryable` says whether trying later may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class RetryableDeliveryError(DeliveryError):
    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


# --- Money and windows -------------------------------------------------------------------


def usd(micros: int) -> str:
    """ "$12.34" for display; sub-cent amounts keep four decimals so they do not read $0.00."""
    amount = Decimal(micros) / MICROS_PER_USD
    places = Decimal("0.0001") if 0 < abs(micros) < 10_000 else Decimal("0.01")
    return f"${amount.quantize(places, rounding=ROUND_HALF_UP):,}"


def dashboard_url() -> str:
    return settings.SITE_URL + reverse("dashboard")


# --- Messages and payloads ---------------------------------------------------------------


@dataclass(frozen=True)
class AlertMessage:
    """What an alert says, independent of the channel. Serialisable for Celery (JSON)."""

    title: str
    text: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""
    severity: str = "warning"  # info | warning | critical

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlertMessage:
        return cls(
            title=str(data["title"]),
            text=str(data["text"]),
            fields=[(str(k), str(v)) for k, v in data.get("fields", [])],
            url=str(data.get("url", "")),
            severity=str(data.get("severity", "warning")),
        )

    def plain_text(self) -> str:
        lines = [self.text, ""]
        lines += [f"{name}: {value}" for name, value in self.fields]
        if self.url:
            lines += ["", f"Dashboard: {self.url}"]
        return "\n".join(lines)


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats &, < and > as control characters (links, mentions).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(message: AlertMessage) -> dict[str, Any]:
    """An incoming-webhook body: `text` (notification fallback) plus Block Kit blocks."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": message.title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(message.text)[:3000]}},
    ]
    if message.fields:
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{_slack_escape(n)}*\n{_slack_escape(v)}"[:2000]}
                    for n, v in message.fields[:10]
                ],
            }
        )
    if message.url:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open dashboard"},
                        "url": message.url,
                    }
                ],
            }
        )
    return {"text": _slack_escape(f"{message.title}: {message.text}")[:3000], "blocks": blocks}


_DISCORD_COLOURS = {"info": 0x3B82F6, "warning": 0xF59E0B, "critical": 0xDC2626}


def discord_payload(message: AlertMessage) -> dict[str, Any]:
    """An execute-webhook body: `content` plus one embed; mentions in user text are inert."""
    embed: dict[str, Any] = {
        "title": message.title[:256],
        "description": message.text[:4096],
        "color": _DISCORD_COLOURS.get(message.severity, _DISCORD_COLOURS["warning"]),
        "fields": [
            {"name": n[:256], "value": v[:1024], "inline": True} for n, v in message.fields[:25]
        ],
    }
    if message.url:
        embed["url"] = message.url
    return {
        "username": "BudgetLLM",
        "content": message.title[:2000],
        "embeds": [embed],
        # A key or cap name like "@everyone" must not ping the whole server.
        "allowed_mentions": {"parse": []},
    }


# --- Webhook URL checks and delivery -------------------------------------------------------

_SLACK_HOSTS = frozenset({"hooks.slack.com"})
_DISCORD_HOSTS = frozenset(
    {"discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com"}
)
_SLACK_PATH = re.compile(r"^/(services|workflows|triggers)/[A-Za-z0-9_/-]+$")
_DISCORD_PATH = re.compile(r"^/api/(v\d+/)?webhooks/\d+/[A-Za-z0-9_-]+$")


def _test_origins() -> frozenset[str]:
    # Honoured only in development and tests, re-checked here in case a settings override
    # tried to turn it on in production.
    if not (settings.DEBUG or settings.TESTING):
        return frozenset()
    return frozenset(o.rstrip("/") for o in settings.ALERT_WEBHOOK_TEST_ORIGINS)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def webhook_url_validate(*, kind: str, url: str) -> str:
    """The URL, stripped, if it is a Slack/Discord incoming webhook; WebhookUrlInvalid if not."""
    url = url.strip()
    name = "Slack" if kind == AlertChannel.Kind.SLACK else "Discord"
    example = (
        "https://hooks.slack.com/services/…"
        if kind == AlertChannel.Kind.SLACK
        else "https://discord.com/api/webhooks/…"
    )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlInvalid(
            f"That is not a valid URL. Paste the {name} webhook URL ({example})."
        ) from exc
    path_ok = (_SLACK_PATH if kind == AlertChannel.Kind.SLACK else _DISCORD_PATH).match(parts.path)
    if _origin(url) in _test_origins():
        if not path_ok:
            raise WebhookUrlInvalid(f"Not a {name} webhook path.")
        return url
    hosts = _SLACK_HOSTS if kind == AlertChannel.Kind.SLACK else _DISCORD_HOSTS
    if parts.scheme != "https":
        raise WebhookUrlInvalid(f"{name} webhook URLs start with https:// ({example}).")
    if parts.username or parts.password or port not in (None, 443):
        raise WebhookUrlInvalid(
            f"Paste the {name} webhook URL exactly as {name} shows it ({example})."
        )
    if (parts.hostname or "").lower() not in hosts:
        raise WebhookUrlInvalid(
            f"{name} webhook URLs are on {' or '.join(sorted(hosts))} ({example})."
        )
    if not path_ok:
        raise WebhookUrlInvalid(f"That is not a {name} incoming-webhook URL ({example}).")
    return url


def _public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _resolve_public(host: str, port: int) -> str:
    """One address of `host`, after checking that EVERY address it resolves to is public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise RetryableDeliveryError(f"Could not resolve {host}: {exc}") from exc
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise RetryableDeliveryError(f"{host} has no addresses")
    if not all(_public_address(a) for a in addresses):
        # A provider host never resolves to a private address; one that does is a
        # misconfigured resolver or a DNS-rebinding attempt at our internal network.
        raise DeliveryError(
            f"{host} resolves to a private address; refusing to send", retryable=False
        )
    return addresses[0]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address checked beforehand, with SNI and certificate checks for the host."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _post_json(*, kind: str, url: str, payload: dict[str, Any]) -> tuple[int, bytes]:
    url = webhook_url_validate(kind=kind, url=url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    timeout = float(settings.ALERT_WEBHOOK_TIMEOUT_SECONDS)
    conn: http.client.HTTPConnection
    if _origin(url) in _test_origins():
        conn = http.client.HTTPConnection(host, parts.port or 80, timeout=timeout)
    else:
        port = parts.port or 443
        conn = _PinnedHTTPSConnection(
            host, port, address=_resolve_public(host, port), timeout=timeout
        )
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    body = json.dumps(payload).encode()
    try:
        conn.request(
            "POST",
            path,
            body=body,
            headers={"Content-Type": "application/json", "User-Agent": "BudgetLLM-alerts/1"},
        )
        response = conn.getresponse()
        return response.status, response.read(2048)
    except (OSError, http.client.HTTPException) as exc:
        raise RetryableDeliveryError(f"Could not reach {host}: {exc}") from exc
    finally:
        conn.close()


def _deliver_webhook(*, channel: AlertChannel, message: AlertMessage) -> None:
    name = channel.get_kind_display()
    payload = (
        slack_payload(message)
        if channel.kind == AlertChannel.Kind.SLACK
        else discord_payload(message)
    )
    status, body = _post_json(kind=channel.kind, url=channel.target, payload=payload)
    if 200 <= status < 300:
        return
    detail = body.decode("utf-8", "replace")[:200]
    if status == 429 or status >= 500:
        raise RetryableDeliveryError(f"{name} answered {status}: {detail}")
    # 400/403/404: a bad payload or a deleted webhook; retrying will not fix it.
    raise DeliveryError(f"{name} answered {status}: {detail}", retryable=False)


def _deliver_email(*, channel: AlertChannel, message: AlertMessage) -> None:
    try:
        send_mail(
            f"[BudgetLLM] {message.title}",
            message.plain_text(),
            settings.DEFAULT_FROM_EMAIL,
            [channel.target],
        )
    except OSError as exc:  # SMTP errors are OSErrors (smtplib.SMTPException)
        raise RetryableDeliveryError(f"Email to {channel.target} failed: {exc}") from exc


def alert_deliver(*, channel: AlertChannel, message: AlertMessage) -> None:
    """Send one message to one channel and record the outcome on the channel.

    Raises DeliveryError on failure (the task retries the retryable ones).
    """
    try:
        if channel.kind == AlertChannel.Kind.EMAIL:
            _deliver_email(channel=channel, message=message)
        else:
            _deliver_webhook(channel=channel, message=message)
    except (DeliveryError, WebhookUrlInvalid) as exc:
        AlertChannel.objects.filter(pk=channel.pk).update(
            consecutive_failures=F("consecutive_failures") + 1,
            last_failure_at=timezone.now(),
            last_error=str(exc)[:300],
        )
        logger.warning(
            "alert delivery failed", extra={"channel": str(channel.public_id), "error": str(exc)}
        )
        if isinstance(exc, WebhookUrlInvalid):
            raise DeliveryError(str(exc), retryable=False) from exc
        raise
    AlertChannel.objects.filter(pk=channel.pk).update(
        consecutive_failures=0, last_success_at=timezone.now(), last_error=""
    )


# --- Channels --------------------------------------------------------------------------------


def allowed_channel_kinds(*, account: Account) -> frozenset[str]:
    return entitlements_for(account).alert_channels


def alert_channels_for(*, account: Account) -> list[AlertChannel]:
    """The account's channels; an account without an email channel gets its owners' emails."""
    channels = list(AlertChannel.objects.filter(account=account).order_by("created_at", "pk"))
    if not any(c.kind == AlertChannel.Kind.EMAIL for c in channels):
        owners = Membership.objects.filter(
            account=account, role=Membership.Role.OWNER
        ).select_related("user")
        for membership in owners:
            channel, _ = AlertChannel.objects.get_or_create(
                account=account, kind=AlertChannel.Kind.EMAIL, target=membership.user.email
            )
            channels.append(channel)
    return channels


def alert_channel_add(*, account: Account, kind: str, target: str) -> AlertChannel:
    if kind not in AlertChannel.Kind.values:
        raise AlertError("Choose email, Slack or Discord.")
    if kind not in allowed_channel_kinds(account=account):
        raise ChannelNotAllowed(
            f"{AlertChannel.Kind(kind).label} alerts are on the Pro and Team plans; email works on every plan."
        )
    if kind == AlertChannel.Kind.EMAIL:
        target = target.strip().lower()
        try:
            validate_email(target)
        except Exception as exc:
            raise AlertError("Enter a valid email address.") from exc
    else:
        target = webhook_url_validate(kind=kind, url=target)
    channel, created = AlertChannel.objects.get_or_create(account=account, kind=kind, target=target)
    if not created:
        raise AlertError("That channel is already set up.")
    return channel


def alert_channel_set_enabled(*, channel: AlertChannel, enabled: bool) -> None:
    channel.enabled = enabled
    channel.save(update_fields=["enabled"])


def alert_channel_remove(*, channel: AlertChannel) -> None:
    channel.delete()


def alert_dispatch(*, account: Account, message: AlertMessage) -> int:
    """Queue `message` to every enabled channel the plan allows, one task each. Returns the count."""
    from .tasks import alert_deliver_task

    allowed = allowed_channel_kinds(account=account)
    channels = [c for c in alert_channels_for(account=account) if c.enabled and c.kind in allowed]
    payload = message.to_dict()
    for channel in channels:
        # After commit: the worker must find the rows this transaction wrote.
        transaction.on_commit(
            lambda cid=channel.pk: alert_deliver_task.delay(cid, payload)  # type: ignore[misc]
        )
    return len(channels)


# A channel's target is whatever address or webhook the user typed, unverified: without
# a limit the test button would let anyone aim our mail server at someone else's inbox.
TEST_ALERT_CHANNEL_INTERVAL_SECONDS = 60
TEST_ALERTS_PER_ACCOUNT_PER_HOUR = 20


def _test_alert_allowed(channel: AlertChannel) -> bool:
    if not cache.add(
        f"alerts:test:channel:{channel.public_id}", 1, timeout=TEST_ALERT_CHANNEL_INTERVAL_SECONDS
    ):
        return False
    key = f"alerts:test:account:{channel.account.public_id}"
    if cache.add(key, 1, timeout=3600):
        return True
    try:
        return cache.incr(key) <= TEST_ALERTS_PER_ACCOUNT_PER_HOUR
    except ValueError:  # expired between add and incr
        return cache.add(key, 1, timeout=3600)


def alert_send_test(*, channel: AlertChannel) -> None:
    """Queue a test alert to `channel`. Raises TestAlertTooSoon when sent too often."""
    from .tasks import alert_deliver_task

    if not _test_alert_allowed(channel):
        raise TestAlertTooSoon(
            "A test alert was sent a moment ago; check that channel, or try again in a minute."
        )
    message = AlertMessage(
        title="Test alert from BudgetLLM",
        text=f"This {channel.get_kind_display()} channel will receive your budget alerts.",
        fields=[("Account", str(channel.account))],
        url=dashboard_url(),
        severity="info",
    )
    payload = message.to_dict()
    transaction.on_commit(lambda: alert_deliver_task.delay(channel.pk, payload))


# --- Threshold evaluation ---------------------------------------------------------------------


@dataclass(frozen=True)
class CapUsage:
    cap: Cap
    window_key: str  # "day:2026-11-23" / "month:2026-11" in the account's zone
    resets_at: datetime
    spent_micros: int


def _cap_usages(*, account: Account, now: datetime) -> list[CapUsage]:
    """Each day/month cap with what the ledger says was spent (settled) in its window."""
    statuses = [
        s for s in services.cap_status(account=account, now=now) if s.window_start and s.resets_at
    ]
    caps = Cap.objects.select_related("api_key").in_bulk([s.cap_id for s in statuses])
    usages = []
    for status in statuses:
        cap = caps.get(status.cap_id)
        if cap is None or status.window_start is None or status.resets_at is None:
            continue
        label = window_for(
            period=status.period, now=status.window_start, tz_name=account.timezone
        ).label
        usages.append(
            CapUsage(
                cap=cap,
                window_key=f"{status.period}:{label}",
                resets_at=status.resets_at,
                spent_micros=status.spent_micros,
            )
        )
    return usages


def _thresholds(cap: Cap) -> list[int]:
    raw = cap.alert_thresholds if cap.alert_thresholds else settings.ALERT_THRESHOLDS_DEFAULT
    return sorted({int(t) for t in raw if 0 < int(t) <= 1000})


def _claim(*, usage: CapUsage, threshold: int) -> bool:
    """INSERT the (cap, window, threshold) row; True only for the one worker whose INSERT wins."""
    try:
        with transaction.atomic():
            AlertFired.objects.create(
                cap=usage.cap,
                window_key=usage.window_key,
                threshold=threshold,
                spent_micros=usage.spent_micros,
                limit_micros=usage.cap.limit_micros,
            )
    except IntegrityError:
        return False
    return True


def threshold_message(*, usage: CapUsage, threshold: int, tz: ZoneInfo) -> AlertMessage:
    cap = usage.cap
    label = cap.label
    resets = usage.resets_at.astimezone(tz).strftime("%Y-%m-%d %H:%M")
    reached = (
        "reached — requests that would exceed it are refused" if threshold >= 100 else "reached"
    )
    return AlertMessage(
        title=f"{label} at {threshold}%",
        text=(
            f"{label}: {threshold}% {reached}. {usd(usage.spent_micros)} of "
            f"{usd(cap.limit_micros)} spent; resets {resets} {tz.key}."
        ),
        fields=[
            ("Cap", label),
            ("Spent", usd(usage.spent_micros)),
            ("Limit", usd(cap.limit_micros)),
            ("Resets", f"{resets} {tz.key}"),
        ],
        url=dashboard_url(),
        severity="critical" if threshold >= 100 else "warning",
    )


def thresholds_evaluate(*, account: Account, now: datetime | None = None) -> list[AlertFired]:
    """Claim and announce every newly crossed threshold of the account's caps."""
    now = now or timezone.now()
    fired: list[AlertFired] = []
    for usage in _cap_usages(account=account, now=now):
        if usage.cap.limit_micros <= 0:
            continue
        percent_spent = usage.spent_micros * 100
        crossed = [t for t in _thresholds(usage.cap) if percent_spent >= t * usage.cap.limit_micros]
        if not crossed:
            continue
        already = set(
            AlertFired.objects.filter(cap=usage.cap, window_key=usage.window_key).values_list(
                "threshold", flat=True
            )
        )
        claimed = [t for t in crossed if t not in already and _claim(usage=usage, threshold=t)]
        if not claimed:
            continue
        # One message per evaluation naming the highest threshold: a jump from 40 % to
        # 100 % says "100 %" once instead of three messages at once.
        alert_dispatch(
            account=account,
            message=threshold_message(usage=usage, threshold=max(claimed), tz=account.tz),
        )
        fired += list(
            AlertFired.objects.filter(
                cap=usage.cap, window_key=usage.window_key, threshold__in=claimed
            )
        )
    return fired


# --- Spend-spike breaker -----------------------------------------------------------------------


@dataclass(frozen=True)
class BreakerRule:
    enabled: bool
    window_seconds: int
    multiplier: int
    floor_micros: int
    baseline_seconds: int


def breaker_rule(*, breaker: SpikeBreaker | None) -> BreakerRule:
    def pick(value: int | None, default: int) -> int:
        return default if value is None else value

    return BreakerRule(
        enabled=settings.SPIKE_BREAKER_ENABLED and (breaker is None or breaker.enabled),
        window_seconds=pick(
            None if breaker is None else breaker.window_seconds,
            settings.SPIKE_BREAKER_WINDOW_SECONDS,
        ),
        multiplier=pick(
            None if breaker is None else breaker.multiplier, settings.SPIKE_BREAKER_MULTIPLIER
        ),
        floor_micros=pick(
            None if breaker is None else breaker.floor_micros, settings.SPIKE_BREAKER_FLOOR_MICROS
        ),
        baseline_seconds=settings.SPIKE_BREAKER_BASELINE_HOURS * 3600,
    )


@dataclass(frozen=True)
class SpikeReading:
    recent_micros: int
    baseline_micros: int
    tripped: bool


def spike_read(
    *, api_key: ApiKey, rule: BreakerRule, since: datetime | None, now: datetime
) -> SpikeReading:
    """The breaker's rule for one key.

    recent   = spend in the last `window` (not before the last trip)
    baseline = spend in the `baseline` period before that window
    trip when recent > floor AND recent > multiplier × baseline × window / baseline period
    (i.e. the last few minutes ran more than `multiplier` times the key's own average rate).
    """
    window_start = now - timedelta(seconds=rule.window_seconds)
    recent_from = max(window_start, since) if since else window_start
    rows = UsageRecord.objects.filter(account_id=api_key.account_id, api_key=api_key)
    recent = (
        rows.filter(created_at__gt=recent_from, created_at__lte=now).aggregate(
            t=Sum("cost_micros")
        )["t"]
        or 0
    )
    if recent <= rule.floor_micros:
        return SpikeReading(int(recent), 0, False)
    baseline = (
        rows.filter(
            created_at__gt=window_start - timedelta(seconds=rule.baseline_seconds),
            created_at__lte=window_start,
        ).aggregate(t=Sum("cost_micros"))["t"]
        or 0
    )
    # Integer cross-multiplication: recent / window > multiplier * baseline / baseline_period.
    tripped = recent * rule.baseline_seconds > rule.multiplier * baseline * rule.window_seconds
    return SpikeReading(int(recent), int(baseline), tripped)


def spike_breaker_evaluate(*, account: Account, now: datetime | None = None) -> list[ApiKey]:
    """Pause every key of the account whose recent spend spiked; alert at once. Returns them."""
    now = now or timezone.now()
    if not settings.SPIKE_BREAKER_ENABLED:
        return []
    keys = ApiKey.objects.filter(
        account=account, paused_at__isnull=True, revoked_at__isnull=True, disabled_at__isnull=True
    )
    breakers = {b.api_key_id: b for b in SpikeBreaker.objects.filter(api_key__account=account)}
    paused = []
    for api_key in keys:
        breaker = breakers.get(api_key.pk)
        rule = breaker_rule(breaker=breaker)
        if not rule.enabled:
            continue
        reading = spike_read(
            api_key=api_key, rule=rule, since=breaker.tripped_at if breaker else None, now=now
        )
        if not reading.tripped:
            continue
        # Conditional UPDATE: of two workers seeing the same spike, one pauses and alerts.
        if not ApiKey.objects.filter(pk=api_key.pk, paused_at__isnull=True).update(paused_at=now):
            continue
        SpikeBreaker.objects.update_or_create(api_key=api_key, defaults={"tripped_at": now})
        KeyAuditEvent.objects.create(
            account=account,
            actor=None,
            action=KeyAuditEvent.Action.API_KEY_PAUSED,
            subject=f"{api_key.name} ({api_key.prefix}…) by the spend-spike breaker",
        )
        logger.warning(
            "spend-spike breaker paused a key",
            extra={
                "account_id": account.pk,
                "key_prefix": api_key.prefix,
                "recent_micros": reading.recent_micros,
                "baseline_micros": reading.baseline_micros,
            },
        )
        minutes = max(1, rule.window_seconds // 60)
        alert_dispatch(
            account=account,
            message=AlertMessage(
                title=f"Key “{api_key.name}” paused: spend spike",
                text=(
                    f"Key “{api_key.name}” spent {usd(reading.recent_micros)} in the last {minutes} "
                    f"minutes, more than {rule.multiplier}× its usual rate, so BudgetLLM paused it. "
                    "Requests with this key are refused until you resume it on the keys page."
                ),
                fields=[
                    ("Key", f"{api_key.name} ({api_key.prefix}…)"),
                    (f"Last {minutes} min", usd(reading.recent_micros)),
                    (f"Previous {rule.baseline_seconds // 3600} h", usd(reading.baseline_micros)),
                ],
                url=dashboard_url(),
                severity="critical",
            ),
        )
        paused.append(api_key)
    return paused


def breaker_settings_save(
    *,
    api_key: ApiKey,
    enabled: bool,
    window_seconds: int | None,
    multiplier: int | None,
    floor_micros: int | None,
) -> SpikeBreaker:
    breaker, _ = SpikeBreaker.objects.update_or_create(
        api_key=api_key,
        defaults={
            "enabled": enabled,
            "window_seconds": window_seconds,
            "multiplier": multiplier,
            "floor_micros": floor_micros,
        },
    )
    return breaker


# --- Entry points -------------------------------------------------------------------------------


def alerts_evaluate(*, account_id: int, now: datetime | None = None) -> list[AlertFired]:
    """Everything an account's fresh spend may trigger: threshold alerts and the breaker."""
    account = Account.objects.filter(pk=account_id).first()
    if account is None:
        return []
    now = now or timezone.now()
    spike_breaker_evaluate(account=account, now=now)
    return thresholds_evaluate(account=account, now=now)


def _pending_key(account_id: int) -> str:
    return f"alerts:pending:{account_id}"


def alerts_check(*, account_id: int) -> None:
    """Called after a settle (sync code): queue an evaluation of the account, debounced.

    The first settle of an interval queues one task `ALERTS_CHECK_DEBOUNCE_SECONDS` ahead;
    settles until it runs ride along (the task clears the marker before reading, so a
    settle after that queues the next one). Never raises: alerts must not fail a request.
    """
    from .tasks import alerts_evaluate_task

    delay = settings.ALERTS_CHECK_DEBOUNCE_SECONDS
    key = _pending_key(account_id)
    try:
        if delay > 0 and not cache.add(key, 1, timeout=delay + 60):
            return
        alerts_evaluate_task.apply_async(args=[account_id], countdown=max(delay, 0))
    except Exception:
        logger.exception("could not queue the alert check", extra={"account_id": account_id})
        cache.delete(key)


def alerts_check_many(*, account_ids: list[int]) -> None:
    for account_id in account_ids:
        alerts_check(account_id=account_id)


def alerts_pending_clear(*, account_id: int) -> None:
    cache.delete(_pending_key(account_id))
