"""Subscriptions, payments and the provider webhook event store.

Money is integer minor units (paise, cents) with the ISO currency next to it. Plans and
what they include live in `billing.entitlements`; these rows only say which plan an
account has paid for and in what state that subscription is.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from accounts.models import Account


class Provider(models.TextChoices):
    RAZORPAY = "razorpay", "Razorpay"
    LEMONSQUEEZY = "lemonsqueezy", "LemonSqueezy"


class Subscription(models.Model):
    class Status(models.TextChoices):
        # Created at the provider, checkout not completed yet.
        CREATED = "created", "Awaiting payment"
        # First payment / mandate done (Razorpay "authenticated").
        AUTHENTICATED = "authenticated", "Authenticated"
        ACTIVE = "active", "Active"
        # A renewal charge failed and the provider is retrying: the plan is kept meanwhile.
        PENDING = "pending", "Payment retrying"
        # Retries exhausted (Razorpay "halted", LemonSqueezy "unpaid"/"paused").
        HALTED = "halted", "Halted"
        CANCELLED = "cancelled", "Cancelled"
        COMPLETED = "completed", "Completed"
        EXPIRED = "expired", "Expired"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="subscriptions")
    provider = models.CharField(max_length=16, choices=Provider.choices)
    provider_subscription_id = models.CharField(max_length=64)
    # The provider's customer ("cust_…"): Razorpay's payment.failed names only the
    # customer, not the subscription.
    provider_customer_id = models.CharField(max_length=64, blank=True)
    plan = models.CharField(max_length=16)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CREATED)
    current_period_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    # The provider's time of the newest event applied: older deliveries never move the
    # status backwards (providers do not guarantee order).
    last_event_at = models.DateTimeField(null=True, blank=True)
    # First time the subscription granted its plan; a subscription that never did
    # (an abandoned checkout) ends without a downgrade notice.
    started_at = models.DateTimeField(null=True, blank=True)
    # Set once the downgrade for this subscription ending has been applied, so the
    # hourly lapse task and a late webhook do not both notify the user.
    downgraded_at = models.DateTimeField(null=True, blank=True)
    # LemonSqueezy's customer portal (cancel, card change); empty for Razorpay.
    manage_url = models.URLField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "provider_subscription_id"],
                name="subscription_provider_id_uniq",
            ),
        ]
        indexes = [
            # plan_for(): the granting subscriptions of one account.
            models.Index(fields=["account", "status"], name="subscription_account_status"),
        ]

    def __str__(self) -> str:
        return f"{self.get_provider_display()} {self.provider_subscription_id} ({self.plan}, {self.status})"


class Payment(models.Model):
    class Status(models.TextChoices):
        CAPTURED = "captured", "Paid"
        FAILED = "failed", "Failed"
        REFUNDED = "refunded", "Refunded"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="payments")
    subscription = models.ForeignKey(
        Subscription, on_delete=models.SET_NULL, null=True, blank=True, related_name="payments"
    )
    provider = models.CharField(max_length=16, choices=Provider.choices)
    # Razorpay "pay_…"; LemonSqueezy "invoice:<subscription-invoice id>".
    provider_payment_id = models.CharField(max_length=64)
    # Integer minor units (paise for INR, cents for USD) of `currency`.
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices)
    description = models.CharField(max_length=200, blank=True)
    # When the provider says the payment happened.
    paid_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "provider_payment_id"], name="payment_provider_id_uniq"
            ),
        ]
        indexes = [
            # Payment history on the billing page: newest first, per account.
            models.Index(fields=["account", "-paid_at"], name="payment_account_paid"),
        ]

    def __str__(self) -> str:
        return f"{self.provider_payment_id} {self.amount_minor} {self.currency} {self.status}"


class WebhookEvent(models.Model):
    """Every verified provider delivery, once: the unique id makes a redelivery a no-op."""

    class HandlerStatus(models.TextChoices):
        STARTED = "started", "Started"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    provider = models.CharField(max_length=16, choices=Provider.choices)
    # Razorpay: the x-razorpay-event-id header. LemonSqueezy sends no delivery id:
    # "<event name>:<object id>:<updated_at>" names one state of one object.
    event_id = models.CharField(max_length=200)
    event_type = models.CharField(max_length=64)
    payload = models.JSONField()
    handler_status = models.CharField(
        max_length=16, choices=HandlerStatus.choices, default=HandlerStatus.STARTED
    )
    # What the handler did ("ignored: …", "subscription sub_… → active") or the error.
    outcome = models.TextField(blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    received_at = models.DateTimeField(default=timezone.now)
    handled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "event_id"], name="webhookevent_provider_event_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_type} {self.event_id} ({self.handler_status})"


class BillingNotice(models.Model):
    """A message the user must see about their plan (shown as a banner until dismissed)."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="billing_notices")
    message = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    dismissed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The banner: an account's undismissed notices.
            models.Index(
                fields=["account", "-created_at"],
                name="notice_account_open",
                condition=models.Q(dismissed_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return self.message[:60]
