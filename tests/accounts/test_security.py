"""CSRF on every accounts form, and a Django admin that is staff-only with no side door."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import User

from .conftest import last_login_mail, request_login, signed_in_email

pytestmark = pytest.mark.django_db


def _csrf_client(person=None) -> Client:  # type: ignore[no-untyped-def]
    client = Client(enforce_csrf_checks=True)
    if person is not None:
        client.force_login(
            person.user, backend="allauth.account.auth_backends.AuthenticationBackend"
        )
    return client


def test_login_form_enforces_csrf(mailoutbox) -> None:
    response = _csrf_client().post("/accounts/login/", {"email": "alice@example.com"})

    assert response.status_code == 403
    assert mailoutbox == []
    assert not User.objects.filter(email="alice@example.com").exists()


def test_magic_link_confirm_enforces_csrf(mailoutbox) -> None:
    request_login(Client(), "alice@example.com")
    link = last_login_mail(mailoutbox).link_path

    client = _csrf_client()
    response = client.post(link)

    assert response.status_code == 403
    assert signed_in_email(client) is None
    assert User.objects.get(email="alice@example.com").last_login is None


def test_code_confirm_enforces_csrf(mailoutbox) -> None:
    client = Client(enforce_csrf_checks=True)
    page = client.get("/accounts/login/")
    token = page.context["csrf_token"]
    client.post("/accounts/login/", {"email": "alice@example.com", "csrfmiddlewaretoken": token})

    response = client.post(
        "/accounts/login/code/confirm/", {"code": last_login_mail(mailoutbox).code}
    )

    assert response.status_code == 403
    assert signed_in_email(client) is None


def test_settings_form_enforces_csrf(owner) -> None:
    response = _csrf_client(owner).post("/account/settings/", {"timezone": "Asia/Tokyo"})

    assert response.status_code == 403
    owner.account.refresh_from_db()
    assert owner.account.timezone == "UTC"


def test_delete_form_enforces_csrf(owner) -> None:
    response = _csrf_client(owner).post("/account/delete/", {"confirm_email": owner.user.email})

    assert response.status_code == 403
    assert User.objects.filter(pk=owner.user.pk).exists()


def test_logout_enforces_csrf(owner) -> None:
    client = _csrf_client(owner)

    response = client.post("/accounts/logout/")

    assert response.status_code == 403
    assert signed_in_email(client) == owner.user.email


def test_forms_work_with_the_token(owner) -> None:
    client = _csrf_client(owner)
    token = client.get("/account/settings/").context["csrf_token"]

    response = client.post(
        "/account/settings/", {"timezone": "Asia/Tokyo", "csrfmiddlewaretoken": token}
    )

    assert response.status_code == 302


def test_admin_sends_anonymous_people_to_the_magic_link_login() -> None:
    response = Client().get("/admin/", follow=True)

    assert response.redirect_chain[-1][0] == "/accounts/login/?next=%2Fadmin%2F"
    assert response.status_code == 200


def test_admin_password_login_is_not_a_side_door() -> None:
    staff = User.objects.create_superuser("root@example.com", password="hunter2-hunter2")

    client = Client()
    response = client.post(
        "/admin/login/", {"username": staff.email, "password": "hunter2-hunter2"}
    )

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert signed_in_email(client) is None


def test_admin_is_not_reachable_by_non_staff(owner) -> None:
    assert owner.client.get("/admin/login/").status_code == 404
    response = owner.client.get("/admin/", follow=True)
    assert response.status_code == 404
    assert owner.client.get("/admin/accounts/user/").status_code in (302, 404)
    assert owner.client.get("/admin/accounts/user/", follow=True).status_code == 404


def test_staff_reach_the_admin_after_a_magic_link(mailoutbox) -> None:
    User.objects.create_superuser("root@example.com")
    browser = Client()
    request_login(browser, "root@example.com", next_url="/admin/")

    response = browser.get(last_login_mail(mailoutbox).link_path)
    assert response["Location"] == "/admin/"

    assert browser.get("/admin/").status_code == 200
    assert browser.get("/admin/accounts/user/").status_code == 200
    assert browser.get("/admin/login/?next=/admin/accounts/account/")["Location"] == (
        "/admin/accounts/account/"
    )
