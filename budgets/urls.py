from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/chart/", views.dashboard_chart, name="dashboard_chart"),
    path("dashboard/requests/", views.dashboard_requests, name="dashboard_requests"),
    path("dashboard/pause/", views.account_pause, name="account_pause"),
    path("dashboard/resume/", views.account_resume, name="account_resume"),
    path("dashboard/keys/<uuid:public_id>/pause/", views.key_pause, name="key_pause"),
    path("dashboard/keys/<uuid:public_id>/resume/", views.key_resume, name="key_resume"),
    path("caps/", views.caps, name="caps"),
    path("caps/<uuid:public_id>/delete/", views.cap_remove, name="cap_remove"),
    path("welcome/", views.onboarding, name="onboarding"),
    path("welcome/first-request/", views.onboarding_first_request, name="onboarding_first_request"),
]
