from __future__ import annotations

from django.urls import path

from . import views

app_name = "keys"

urlpatterns = [
    path("", views.index, name="index"),
    path("provider/add/", views.provider_key_add, name="provider_add"),
    path("provider/<uuid:public_id>/delete/", views.provider_key_delete, name="provider_delete"),
    path("api/create/", views.api_key_create, name="api_create"),
    path("api/<uuid:public_id>/revoke/", views.api_key_revoke, name="api_revoke"),
    path("api/<uuid:public_id>/pause/", views.api_key_pause, name="api_pause"),
    path("api/<uuid:public_id>/resume/", views.api_key_resume, name="api_resume"),
]
