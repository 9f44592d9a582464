from __future__ import annotations

from django.urls import path

from . import views

app_name = "billing"

urlpatterns = [
    path("", views.billing_page, name="page"),
    path("razorpay/subscribe/", views.razorpay_subscribe, name="razorpay_subscribe"),
    path("razorpay/checkout/<uuid:public_id>/", views.razorpay_checkout, name="razorpay_checkout"),
    path("razorpay/verify/", views.razorpay_verify, name="razorpay_verify"),
    path(
        "lemonsqueezy/checkout/<str:plan>/",
        views.lemonsqueezy_checkout,
        name="lemonsqueezy_checkout",
    ),
    path("cancel/", views.subscription_cancel, name="cancel"),
    path("keys/", views.keys_keep, name="keys_keep"),
    path("notices/dismiss/", views.notices_dismiss, name="notices_dismiss"),
    path("webhooks/razorpay/", views.razorpay_webhook, name="razorpay_webhook"),
    path("webhooks/lemonsqueezy/", views.lemonsqueezy_webhook, name="lemonsqueezy_webhook"),
    path(
        "standin/lemonsqueezy/checkout/buy/<str:variant>/",
        views.standin_lemonsqueezy,
        name="standin_lemonsqueezy",
    ),
]
