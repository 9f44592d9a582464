from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    # Listed before accounts.urls in the root URLconf, so "/" resolves here.
    path("", views.landing, name="landing"),
    path("waitlist/", views.waitlist, name="waitlist"),
]
