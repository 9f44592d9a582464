from __future__ import annotations

from django.urls import path

from . import views, views_alerts

urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
    path("alerts/", views_alerts.alert_settings, name="alerts"),
    path("alerts/channels/", views_alerts.alert_channel_add, name="alert_channel_add"),
    path(
        "alerts/channels/<uuid:public_id>/test/",
        views_alerts.alert_channel_test,
        name="alert_channel_test",
    ),
    path(
        "alerts/channels/<uuid:public_id>/toggle/",
        views_alerts.alert_channel_toggle,
        name="alert_channel_toggle",
    ),
    path(
        "alerts/channels/<uuid:public_id>/delete/",
        views_alerts.alert_channel_delete,
        name="alert_channel_delete",
    ),
    path(
        "alerts/breaker/<uuid:key_public_id>/",
        views_alerts.spike_breaker_save,
        name="spike_breaker_save",
    ),
    path("dashboard/chart/", views.dashboard_chart, name="dashboard_chart"),
    path("dashboard/requests/", views.dashboard_requests, name="dashboard_requests"),
    path("dashboard/pause/", views.account_pause, name="account_pause"),
    path("dashboard/resume/", views.account_resume, name="account_resume"),
    path("dashboard/keys/<uuid:public_id>/pause/", views.key_pause, name="key_pause"),
    path("dashboard/keys/<uuid:public_id>/resume/", views.key_resume, name="key_resume"),
    path("caps/", views.caps, name="caps"),
    path("caps/<uuid:public_id>/delete/", views.cap_remove, name="cap_remove"),
    path("caps/prices/", views.model_price_save, name="model_price_save"),
    path("caps/prices/remove/", views.model_price_remove, name="model_price_remove"),
    path("welcome/", views.onboarding, name="onboarding"),
    path("welcome/first-request/", views.onboarding_first_request, name="onboarding_first_request"),
]
