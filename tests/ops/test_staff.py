from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.test import Client

from billing.models import Subscription
from budgets.models import UsageRecord
from proxy.selectors import business_numbers
from tests.conftest import Person


def usage(person: Person, *, cost: int, saved: int, hit: bool) -> None:
    UsageRecord.objects.create(
        request_id=uuid.uuid4(),
        account=person.account,
        endpoint="chat.completions",
        model="gpt-4o-mini",
        cost_micros=cost,
        saved_micros=saved,
        cache_status="HIT" if hit else "MISS",
        http_status=200,
    )


@pytest.mark.django_db
def test_staff_page_is_404_for_everyone_but_staff(owner: Person, client: Client) -> None:
    assert client.get("/staff/metrics/").status_code == 404
    assert owner.client.get("/staff/metrics/").status_code == 404
    owner.user.is_staff = True
    owner.user.save()
    response = owner.client.get("/staff/metrics/")
    assert response.status_code == 200
    assert b"saved per user per month" in response.content


@pytest.mark.django_db
def test_business_numbers(owner: Person, outsider: Person, teammate: Person) -> None:
    usage(owner, cost=2_000_000, saved=0, hit=False)
    usage(owner, cost=0, saved=3_000_000, hit=True)
    usage(outsider, cost=0, saved=1_000_000, hit=True)
    usage(outsider, cost=500_000, saved=0, hit=False)
    Subscription.objects.create(
        account=owner.account,
        provider="razorpay",
        provider_subscription_id="s1",
        plan="pro",
        status="active",
    )
    Subscription.objects.create(
        account=outsider.account,
        provider="razorpay",
        provider_subscription_id="s2",
        plan="team",
        status="created",
    )
    numbers = business_numbers()
    assert (numbers.signups_total, numbers.signups_7d) == (3, 3)
    assert numbers.weekly_active_accounts == 2
    assert (numbers.requests_7d, numbers.requests_30d, numbers.cache_hits_30d) == (4, 4, 2)
    assert numbers.cache_hit_rate_percent == 50.0
    assert numbers.saved_30d_micros == 4_000_000
    assert numbers.saved_per_account_month_micros == 2_000_000  # $4 over 2 active accounts
    assert [(s.name, s.saved_micros) for s in numbers.top_savers] == [
        ("owner@example.com", 3_000_000),
        ("outsider@example.com", 1_000_000),
    ]
    assert numbers.paid_accounts_by_plan == {"pro": 1, "team": 0}  # "created" grants nothing


def test_anonymous_staff_page(client: Client, db: Any) -> None:
    assert client.get("/staff/metrics/").status_code == 404
