"""Billing workflows: checkout, cancellation, plan changes and what a downgrade does.

Nothing here deletes a user's data when a plan shrinks: keys beyond the new limit are
disabled (and can be re-chosen), caps above the new maximum are lowered, and the user
is told what changed and why, by a banner and an email.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

import razorpay
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import Account, Membership
from accounts.team import team_members_restore, team_members_suspend
from budgets.models import Cap, DailyUsage, RunDailyUsage, RunMonthlyUsage, UsageRecord
from budgets.services import caps_changed
from keys.models import ApiKey, ProviderKey

from .entitlements import GRANTING_STATUSES, PLANS, entitlements_for, plan_for, plan_rank
from .gateway import razorpay_client, razorpay_gateway
from .models import BillingNotice, Provider, Subscription

logger = logging.getLogger(__name__)

PAID_PLANS = ("pro", "team")
CURRENCY_EXPONENT = {"INR": 2, "USD": 2}
CURRENCY_SYMBOL = {"INR": "₹", "USD": "$"}


class BillingError(Exception):
    """A billing action the user asked for cannot be done; the message says why."""


class CheckoutInvalid(BillingError):
    pass


@dataclass(frozen=True)
class Price:
    plan: str
    provider: str
    amount_minor: int
    currency: str

    @property
    def display(self) -> str:
        return money_format(self.amount_minor, self.currency)


def money_format(amount_minor: int, currency: str) -> str:
    """'₹1,599' / '$19.50': integer minor units formatted at the edge, never via float."""
    exponent = CURRENCY_EXPONENT.get(currency, 2)
    major, minor = divmod(abs(amount_minor), 10**exponent)
    sign = "-" if amount_minor < 0 else ""
    symbol = CURRENCY_SYMBOL.get(currency, currency + " ")
    text = f"{sign}{symbol}{major:,}"
    return text + (f".{minor:0{exponent}d}" if minor else "")


def micros_format(micros: int) -> str:
    cents = -(-micros // 10_000)  # round up: a limit is never shown lower than it is
    return money_format(cents, "USD")


# --- Prices and provider configuration ----------------------------------------------


def razorpay_enabled() -> bool:
    return bool(settings.RAZORPAY_KEY_ID and settings.RAZORPAY_KEY_SECRET)


def lemonsqueezy_enabled() -> bool:
    return bool(settings.BILLING_CHECKOUT_STANDIN or settings.LEMONSQUEEZY_STORE_URL)


def razorpay_plan_ids() -> dict[str, str]:
    return {"pro": settings.RAZORPAY_PLAN_PRO, "team": settings.RAZORPAY_PLAN_TEAM}


def lemonsqueezy_variants() -> dict[str, str]:
    return {"pro": settings.LEMONSQUEEZY_VARIANT_PRO, "team": settings.LEMONSQUEEZY_VARIANT_TEAM}


def plan_for_razorpay_plan_id(plan_id: str) -> str | None:
    return next((p for p, pid in razorpay_plan_ids().items() if pid and pid == plan_id), None)


def plan_for_lemonsqueezy_variant(variant_id: str) -> str | None:
    return next((p for p, v in lemonsqueezy_variants().items() if v and v == variant_id), None)


def prices() -> dict[str, list[Price]]:
    """Paid plans' prices per provider, as configured (Razorpay in paise, LemonSqueezy in cents)."""
    return {
        Provider.RAZORPAY: [
            Price("pro", Provider.RAZORPAY, settings.RAZORPAY_PRICE_PRO_PAISE, "INR"),
            Price("team", Provider.RAZORPAY, settings.RAZORPAY_PRICE_TEAM_PAISE, "INR"),
        ],
        Provider.LEMONSQUEEZY: [
            Price("pro", Provider.LEMONSQUEEZY, settings.LEMONSQUEEZY_PRICE_PRO_CENTS, "USD"),
            Price("team", Provider.LEMONSQUEEZY, settings.LEMONSQUEEZY_PRICE_TEAM_CENTS, "USD"),
        ],
    }


INDIA_TIMEZONES = frozenset({"Asia/Kolkata", "Asia/Calcutta"})


def provider_order(*, account: Account, accept_language: str) -> list[str]:
    """Razorpay first for people in India (time zone or an -IN language), else LemonSqueezy."""
    languages = accept_language.lower()
    in_india = account.timezone in INDIA_TIMEZONES or "-in" in languages or "hi" in languages
    order = [Provider.RAZORPAY, Provider.LEMONSQUEEZY]
    if not in_india:
        order.reverse()
    enabled = {Provider.RAZORPAY: razorpay_enabled(), Provider.LEMONSQUEEZY: lemonsqueezy_enabled()}
    return [str(p) for p in order if enabled[p]]


# --- Razorpay checkout ----------------------------------------------------------------


def razorpay_subscription_start(*, account: Account, plan: str) -> Subscription:
    """Create the subscription at Razorpay; Checkout then collects the first payment."""
    if plan not in PAID_PLANS:
        raise BillingError("Choose Pro or Team.")
    plan_id = razorpay_plan_ids()[plan]
    if not (razorpay_enabled() and plan_id):
        raise BillingError("Razorpay is not configured on this server.")
    created = razorpay_gateway().subscription_create(
        plan_id=plan_id,
        total_count=settings.RAZORPAY_TOTAL_COUNT,
        # Notes come back in every webhook: they tie the subscription to the account
        # even if our row were lost.
        notes={"account_public_id": str(account.public_id), "plan": plan},
    )
    return Subscription.objects.create(
        account=account,
        provider=Provider.RAZORPAY,
        provider_subscription_id=str(created["id"]),
        plan=plan,
        status=Subscription.Status.CREATED,
    )


def razorpay_checkout_verify(
    *, account: Account, payment_id: str, subscription_id: str, signature: str
) -> Subscription:
    """Grant the plan only after Checkout's result verifies under our key secret."""
    sub = Subscription.objects.filter(
        account=account, provider=Provider.RAZORPAY, provider_subscription_id=subscription_id
    ).first()
    if sub is None:
        raise CheckoutInvalid("That subscription is not one of yours.")
    try:
        razorpay_client().utility.verify_subscription_payment_signature(
            {
                "razorpay_payment_id": payment_id,
                "razorpay_subscription_id": subscription_id,
                "razorpay_signature": signature,
            }
        )
    except razorpay.errors.SignatureVerificationError as exc:
        raise CheckoutInvalid(
            "The payment could not be verified; nothing was charged to your plan."
        ) from exc
    with transaction.atomic():
        sub = Subscription.objects.select_for_update().get(pk=sub.pk)
        before = plan_for(account)
        if sub.status == Subscription.Status.CREATED:
            # Not a provider event: it does not set last_event_at, so the webhooks that
            # follow apply in their own order.
            sub.status = Subscription.Status.AUTHENTICATED
            sub.save(update_fields=["status", "updated_at"])
        subscription_changed(sub=sub, before_plan=before, reason="your payment went through")
    return sub


def subscription_cancel_at_period_end(*, account: Account) -> Subscription:
    """Cancel the account's paid subscription at the end of the period already paid for."""
    sub = current_subscription(account)
    if sub is None:
        raise BillingError("There is no paid subscription to cancel.")
    if sub.provider == Provider.LEMONSQUEEZY:
        # LemonSqueezy cancels in its customer portal; its webhook then tells us.
        raise BillingError("Cancel in the LemonSqueezy customer portal (link below).")
    razorpay_gateway().subscription_cancel(
        subscription_id=sub.provider_subscription_id, at_cycle_end=True
    )
    sub.cancel_at_period_end = True
    sub.save(update_fields=["cancel_at_period_end", "updated_at"])
    return sub


def current_subscription(account: Account) -> Subscription | None:
    """The granting subscription behind the account's plan (the highest plan wins)."""
    now = timezone.now()
    subs = [
        s
        for s in Subscription.objects.filter(account=account, status__in=GRANTING_STATUSES)
        if subscription_grants(s, now=now)
    ]
    subs.sort(key=lambda s: (plan_rank(s.plan) if s.plan in PLANS else -1, s.created_at))
    return subs[-1] if subs else None


def subscription_grants(sub: Subscription, *, now: datetime) -> bool:
    if sub.status not in GRANTING_STATUSES:
        return False
    lapsed = sub.cancel_at_period_end and sub.current_period_end is not None
    return not (lapsed and sub.current_period_end is not None and sub.current_period_end <= now)


# --- LemonSqueezy checkout ----------------------------------------------------------------


def lemonsqueezy_checkout_url(*, account: Account, plan: str, email: str) -> str:
    """The hosted checkout for `plan`, carrying our account id as custom data."""
    variant = lemonsqueezy_variants()[plan]
    query = urlencode(
        {"checkout[custom][account_id]": str(account.public_id), "checkout[email]": email}
    )
    if settings.BILLING_CHECKOUT_STANDIN and not settings.LEMONSQUEEZY_STORE_URL:
        base = reverse("billing:standin_lemonsqueezy", kwargs={"variant": variant})
    else:
        base = f"{settings.LEMONSQUEEZY_STORE_URL}/checkout/buy/{variant}"
    return f"{base}?{query}"


# --- Plan changes ------------------------------------------------------------------------


def _ledger_rereads_limits(account_id: int) -> None:
    """A plan change moves the plan's cap ceiling and may lower caps with a bulk UPDATE
    (no signals): tell the ledger, after commit, so the very next request sees it."""
    transaction.on_commit(lambda: caps_changed(account_id=account_id))


def subscription_changed(*, sub: Subscription, before_plan: str, reason: str) -> list[str]:
    """After `sub` changed state: record its start, and apply a downgrade or upgrade now."""
    _ledger_rereads_limits(sub.account_id)
    now = timezone.now()
    if sub.started_at is None and subscription_grants(sub, now=now):
        sub.started_at = now
        sub.save(update_fields=["started_at", "updated_at"])
    after = plan_for(sub.account)
    if plan_rank(after) > plan_rank(before_plan):
        return plan_limits_restore(account=sub.account)
    return subscription_downgrade_if_due(sub=sub, reason=reason, before_plan=before_plan)


def subscription_downgrade_if_due(
    *, sub: Subscription, reason: str, before_plan: str | None = None
) -> list[str]:
    """Once per subscription that granted a plan and no longer does: enforce the lower plan."""
    _ledger_rereads_limits(sub.account_id)
    now = timezone.now()
    if sub.downgraded_at is not None or sub.started_at is None:
        return []
    if subscription_grants(sub, now=now):
        return []
    sub.downgraded_at = now
    sub.save(update_fields=["downgraded_at", "updated_at"])
    after = plan_for(sub.account)
    from_plan = (
        before_plan if before_plan and plan_rank(before_plan) > plan_rank(after) else sub.plan
    )
    if plan_rank(after) >= plan_rank(from_plan):
        return []  # another subscription still grants as much
    changes = plan_limits_enforce(account=sub.account)
    notice_send(
        account=sub.account,
        subject=f"Your BudgetLLM plan is now {after.title()}",
        message=(
            f"Your plan changed from {from_plan.title()} to {after.title()} because {reason}. "
            + (" ".join(changes) + " " if changes else "")
            + "Nothing was deleted: you can choose which keys to keep on the billing page, "
            "and upgrading again restores them."
        ),
    )
    return changes


def plan_limits_enforce(*, account: Account) -> list[str]:
    """Bring the account within its plan's limits without deleting anything.

    Keys beyond the limit are disabled, keeping the most recently used; caps above the
    plan's largest monthly cap are lowered to it. Returns sentences saying what changed.
    """
    ent = entitlements_for(account)
    now = timezone.now()
    changes: list[str] = []

    provider_keys = list(
        ProviderKey.objects.filter(account=account, disabled_at__isnull=True).order_by(
            "created_at", "id"
        )
    )
    extra_pk = provider_keys[ent.max_provider_keys :]
    if extra_pk:
        ProviderKey.objects.filter(pk__in=[k.pk for k in extra_pk]).update(disabled_at=now)
        hints = ", ".join(str(k) for k in extra_pk)
        changes.append(
            f"Provider keys disabled (the {ent.plan.title()} plan allows "
            f"{ent.max_provider_keys}): {hints}."
        )

    api_keys = list(
        ApiKey.objects.filter(account=account, revoked_at__isnull=True, disabled_at__isnull=True)
    )
    # Keep the keys in use: most recently used first, then the oldest.
    epoch = datetime.min.replace(tzinfo=now.tzinfo)
    api_keys.sort(key=lambda k: (-(k.last_used_at or epoch).timestamp(), k.created_at.timestamp()))
    extra_ak = api_keys[ent.max_api_keys :]
    if extra_ak:
        ApiKey.objects.filter(pk__in=[k.pk for k in extra_ak]).update(disabled_at=now)
        names = ", ".join(str(k) for k in extra_ak)
        changes.append(
            f"BudgetLLM keys disabled (the {ent.plan.title()} plan allows "
            f"{ent.max_api_keys}): {names}."
        )

    if ent.max_monthly_cap_micros is not None:
        limit = ent.max_monthly_cap_micros
        for cap in Cap.objects.filter(account=account, limit_micros__gt=limit):
            changes.append(
                f"{cap.get_period_display()} {cap.get_scope_display().lower()} cap lowered from "
                f"{micros_format(cap.limit_micros)} to {micros_format(limit)}."
            )
        Cap.objects.filter(account=account, limit_micros__gt=limit).update(limit_micros=limit)

    if not ent.team_members:
        # Members are kept (not deleted) but lose access until the account is Team again.
        suspended = team_members_suspend(account=account)
        if suspended:
            changes.append(
                f"Team members lost access (the {ent.plan.title()} plan has no team "
                f"members): {', '.join(suspended)}. Upgrading to Team again restores them."
            )
    return changes


def plan_limits_restore(*, account: Account) -> list[str]:
    """After an upgrade, re-enable keys a downgrade disabled, up to the new limits."""
    ent = entitlements_for(account)
    restored: list[str] = []
    for model, limit, extra in (
        (ProviderKey, ent.max_provider_keys, {}),
        (ApiKey, ent.max_api_keys, {"revoked_at__isnull": True}),
    ):
        active = model.objects.filter(account=account, disabled_at__isnull=True, **extra).count()  # type: ignore[attr-defined]
        room = max(limit - active, 0)
        disabled = list(
            model.objects.filter(account=account, disabled_at__isnull=False, **extra).order_by(  # type: ignore[attr-defined]
                "created_at"
            )[:room]
        )
        if disabled:
            model.objects.filter(pk__in=[k.pk for k in disabled]).update(disabled_at=None)  # type: ignore[attr-defined]
            restored.extend(str(k) for k in disabled)
    restored.extend(team_members_restore(account=account))
    return [f"Re-enabled: {', '.join(restored)}."] if restored else []


def notice_send(*, account: Account, subject: str, message: str) -> BillingNotice:
    """Tell the account's owners: a banner on the site and an email (after commit)."""
    notice = BillingNotice.objects.create(account=account, message=message)
    emails = list(
        Membership.objects.filter(account=account, role=Membership.Role.OWNER).values_list(
            "user__email", flat=True
        )
    )
    body = f"{message}\n\nBilling: {settings.SITE_URL}{reverse('billing:page')}\n"
    if emails:
        transaction.on_commit(lambda: send_mail(subject, body, None, emails))
    return notice


def notices_dismiss(*, account: Account) -> int:
    return BillingNotice.objects.filter(account=account, dismissed_at__isnull=True).update(
        dismissed_at=timezone.now()
    )


# --- Choosing which keys to keep --------------------------------------------------------


def keys_keep_choose(
    *, account: Account, provider_key_ids: set[uuid.UUID], api_key_ids: set[uuid.UUID]
) -> None:
    """Enable exactly the chosen keys (within the plan's limits) and disable the others."""
    ent = entitlements_for(account)
    if len(provider_key_ids) > ent.max_provider_keys:
        raise BillingError(
            f"The {ent.plan.title()} plan keeps {ent.max_provider_keys} provider key(s)."
        )
    if len(api_key_ids) > ent.max_api_keys:
        raise BillingError(
            f"The {ent.plan.title()} plan keeps {ent.max_api_keys} BudgetLLM key(s)."
        )
    provider_keys = {k.public_id: k for k in ProviderKey.objects.filter(account=account)}
    api_keys = {
        k.public_id: k
        for k in ApiKey.objects.filter(account=account, revoked_at__isnull=True).select_related(
            "provider_key"
        )
    }
    if not provider_key_ids <= provider_keys.keys() or not api_key_ids <= api_keys.keys():
        raise BillingError("Choose among your own keys.")
    for key_id in api_key_ids:
        pk = api_keys[key_id].provider_key
        if pk is not None and pk.public_id not in provider_key_ids:
            raise BillingError(
                f"{api_keys[key_id]} forwards to {pk}: keep that provider key too, or the key cannot work."
            )
    now = timezone.now()
    with transaction.atomic():
        ProviderKey.objects.filter(account=account, public_id__in=provider_key_ids).update(
            disabled_at=None
        )
        ProviderKey.objects.filter(account=account, disabled_at__isnull=True).exclude(
            public_id__in=provider_key_ids
        ).update(disabled_at=now)
        ApiKey.objects.filter(account=account, public_id__in=api_key_ids).update(disabled_at=None)
        ApiKey.objects.filter(
            account=account, revoked_at__isnull=True, disabled_at__isnull=True
        ).exclude(public_id__in=api_key_ids).update(disabled_at=now)


# --- Periodic work ------------------------------------------------------------------------


def subscriptions_lapse(*, now: datetime | None = None) -> int:
    """Apply the downgrade of subscriptions cancelled at a period end that has passed."""
    now = now or timezone.now()
    due = Subscription.objects.filter(
        status__in=GRANTING_STATUSES,
        cancel_at_period_end=True,
        current_period_end__lte=now,
        downgraded_at__isnull=True,
        started_at__isnull=False,
    ).select_related("account")
    count = 0
    for sub in due:
        with transaction.atomic():
            subscription_downgrade_if_due(
                sub=sub, reason="the subscription was cancelled and its paid period ended"
            )
        count += 1
    return count


def usage_history_purge(*, now: datetime | None = None) -> dict[str, int]:
    """Delete usage older than each account's plan keeps (history_days)."""
    now = now or timezone.now()
    paid: dict[str, set[int]] = {p: set() for p in PAID_PLANS}
    for sub in Subscription.objects.filter(status__in=GRANTING_STATUSES):
        if subscription_grants(sub, now=now) and sub.plan in paid:
            paid[sub.plan].add(sub.account_id)
    deleted = dict.fromkeys(
        ("usage_records", "daily_usage", "run_daily_usage", "run_monthly_usage"), 0
    )
    # Highest plan first, so an account on two plans keeps the longer history.
    seen: set[int] = set()
    groups: list[tuple[int, set[int] | None]] = []
    for plan in reversed(PAID_PLANS):
        plan_ids = paid[plan] - seen
        seen |= plan_ids
        groups.append((PLANS[plan].history_days, plan_ids))
    groups.append((PLANS["free"].history_days, None))  # None = every other account
    for days, ids in groups:
        cutoff = now - timedelta(days=days)
        records = UsageRecord.objects.filter(created_at__lt=cutoff)
        # Daily aggregates of the current month stay whatever the plan keeps: "spend
        # this month" on the dashboard adds them up (a day of margin for time zones).
        month_start = now.date().replace(day=1) - timedelta(days=1)
        first_kept_day = min((cutoff - timedelta(days=1)).date(), month_start)
        rollups = [
            DailyUsage.objects.filter(day__lt=first_kept_day),
            RunDailyUsage.objects.filter(day__lt=first_kept_day),
            # A run's month total goes with the last day of its month.
            RunMonthlyUsage.objects.filter(month__lt=first_kept_day.replace(day=1)),
        ]
        if ids is None:
            records = records.exclude(account_id__in=seen)
            rollups = [q.exclude(account_id__in=seen) for q in rollups]
        else:
            records = records.filter(account_id__in=ids)
            rollups = [q.filter(account_id__in=ids) for q in rollups]
        deleted["usage_records"] += records.delete()[0]
        for name, q in zip(
            ("daily_usage", "run_daily_usage", "run_monthly_usage"), rollups, strict=True
        ):
            deleted[name] += q.delete()[0]
    logger.info("usage history purged: %s", deleted)
    return deleted
