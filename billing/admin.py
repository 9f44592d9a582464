from __future__ import annotations

from django.contrib import admin

from .models import BillingNotice, Payment, Subscription, WebhookEvent


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin):
    """Staff see every delivery and how its handler ended (started/succeeded/failed)."""

    list_display = (
        "received_at",
        "provider",
        "event_type",
        "event_id",
        "handler_status",
        "attempts",
    )
    list_filter = ("provider", "handler_status", "event_type")
    search_fields = ("event_id", "event_type", "outcome", "error")
    readonly_fields = [f.name for f in WebhookEvent._meta.fields]
    ordering = ("-received_at",)


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = (
        "provider_subscription_id",
        "account",
        "provider",
        "plan",
        "status",
        "current_period_end",
        "cancel_at_period_end",
    )
    list_filter = ("provider", "plan", "status", "cancel_at_period_end")
    search_fields = ("provider_subscription_id", "account__name")
    raw_id_fields = ("account",)


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = (
        "paid_at",
        "account",
        "provider",
        "provider_payment_id",
        "amount_minor",
        "currency",
        "status",
    )
    list_filter = ("provider", "status", "currency")
    search_fields = ("provider_payment_id", "account__name")
    raw_id_fields = ("account", "subscription")


@admin.register(BillingNotice)
class BillingNoticeAdmin(admin.ModelAdmin):
    list_display = ("created_at", "account", "message", "dismissed_at")
    raw_id_fields = ("account",)
