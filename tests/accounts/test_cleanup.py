"""Addresses that asked for a sign-in mail but never signed in are removed after a week."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from accounts.models import Account, Membership, User
from accounts.tasks import delete_unused_signups_task

from .conftest import last_login_mail, request_login

pytestmark = pytest.mark.django_db


def test_never_signed_in_users_are_deleted_after_a_week(mailoutbox, owner) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        request_login(Client(), "typo@exmaple.com")
        browser = Client()
        request_login(browser, "real@example.com")
        browser.get(last_login_mail(mailoutbox).link_path)
        request_login(Client(), "invited@example.com")
        invited = User.objects.get(email="invited@example.com")
        Membership.objects.create(account=owner.account, user=invited, role=Membership.Role.MEMBER)

    with time_machine.travel(start + dt.timedelta(days=6), tick=False):
        assert delete_unused_signups_task.delay().get() == 0

    with time_machine.travel(start + dt.timedelta(days=8), tick=False):
        assert delete_unused_signups_task.delay().get() == 1

    assert not User.objects.filter(email="typo@exmaple.com").exists()
    assert not Account.objects.filter(name="typo@exmaple.com").exists()
    assert User.objects.filter(email="real@example.com").exists()
    assert User.objects.filter(email="invited@example.com").exists()
    assert User.objects.filter(pk=owner.user.pk).exists()
