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
]
