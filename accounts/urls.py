from __future__ import annotations

from django.urls import include, path, re_path

from . import views

urlpatterns = [
    # Ours first: the same paths and names as allauth's, so Django resolves to these.
    path("accounts/login/", views.login, name="account_login"),
    path("accounts/login/code/", views.signup, name="account_request_login_code"),
    path("accounts/login/link/<str:token>/", views.magic_link, name="magic_link"),
    path("accounts/signup/", views.signup, name="account_signup"),
    re_path(r"^accounts/password/", views.no_passwords),
    re_path(r"^accounts/email/", views.no_passwords),
    path("accounts/", include("allauth.urls")),
    path("account/settings/", views.account_settings, name="account_settings"),
    path("account/delete/", views.account_delete, name="account_delete"),
    # Before admin.site.urls (included later in the root URLconf), so it wins.
    path("admin/login/", views.admin_login, name="admin_login_redirect"),
]
