from __future__ import annotations

from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.landing, name="landing"),
    path("accounts/", include("allauth.urls")),
]
