from __future__ import annotations

from django.core import mail
from django.urls import reverse

from billing.models import BillingNotice, Subscription
from billing.services import subscription_downgrade_if_due
from budgets.models import Cap
from keys.models import ApiKey, ProviderKey

from .factories import api_key, provider_key, subscription


def downgrade(sub: Subscription) -> list[str]:
    sub.status = Subscription.Status.HALTED
    sub.save()
    return subscription_downgrade_if_due(sub=sub, reason="the test halted it")


def test_downgrade_disables_keys_beyond_the_limit_and_deletes_nothing(
    owner, django_capture_on_commit_callbacks
) -> None:
    sub = subscription(owner.account, plan="pro")
    pks = [provider_key(owner.account, n) for n in range(3)]
    aks = [api_key(owner.account, pks[0], n) for n in range(5)]
    with django_capture_on_commit_callbacks(execute=True):
        changes = downgrade(sub)
    assert ProviderKey.objects.count() == 3 and ApiKey.objects.count() == 5
    assert list(ProviderKey.objects.filter(disabled_at__isnull=True)) == [pks[0]]  # oldest kept
    assert ApiKey.objects.filter(disabled_at__isnull=True).count() == 1
    assert any("Provider keys disabled" in c for c in changes)
    assert any("BudgetLLM keys disabled" in c for c in changes)
    assert len(aks) == 5
    notice = BillingNotice.objects.get(account=owner.account)
    assert "Nothing was deleted" in notice.message
    assert mail.outbox[0].to == ["owner@example.com"]


def test_downgrade_keeps_the_most_recently_used_key(owner) -> None:
    from django.utils import timezone

    sub = subscription(owner.account, plan="pro")
    pk = provider_key(owner.account, 1)
    old, used = api_key(owner.account, pk, 1), api_key(owner.account, pk, 2)
    used.last_used_at = timezone.now()
    used.save()
    downgrade(sub)
    used.refresh_from_db()
    old.refresh_from_db()
    assert used.disabled_at is None and old.disabled_at is not None


def test_downgrade_lowers_caps_above_the_free_maximum(owner) -> None:
    sub = subscription(owner.account, plan="pro")
    big = Cap.objects.create(
        account=owner.account, scope="account", period="month", limit_micros=500_000_000
    )
    small = Cap.objects.create(
        account=owner.account, scope="account", period="day", limit_micros=5_000_000
    )
    changes = downgrade(sub)
    big.refresh_from_db()
    small.refresh_from_db()
    assert big.limit_micros == 100_000_000
    assert small.limit_micros == 5_000_000
    assert any("lowered from $500 to $100" in c for c in changes)


def test_banner_shows_until_dismissed(owner) -> None:
    sub = subscription(owner.account, plan="pro")
    downgrade(sub)
    page = owner.client.get(reverse("billing:page")).content.decode()
    assert 'data-testid="billing-notice"' in page and "Pro to Free" in page
    owner.client.post(reverse("billing:notices_dismiss"), {"next": "https://evil.example/"})
    assert (
        'data-testid="billing-notice"'
        not in owner.client.get(reverse("billing:page")).content.decode()
    )


def test_dismiss_never_redirects_off_site(owner) -> None:
    response = owner.client.post(
        reverse("billing:notices_dismiss"), {"next": "https://evil.example/"}
    )
    assert response["Location"] == reverse("billing:page")


def test_user_chooses_which_keys_to_keep_within_the_limit(owner) -> None:
    sub = subscription(owner.account, plan="pro")
    pks = [provider_key(owner.account, n) for n in range(2)]
    aks = [api_key(owner.account, pks[1], n) for n in range(3)]
    downgrade(sub)
    url = reverse("billing:keys_keep")
    assert owner.client.get(url).status_code == 200
    response = owner.client.post(
        url, {"provider_keys": [str(pks[1].public_id)], "api_keys": [str(aks[2].public_id)]}
    )
    assert response.status_code == 302
    assert list(ProviderKey.objects.filter(disabled_at__isnull=True)) == [pks[1]]
    assert list(ApiKey.objects.filter(disabled_at__isnull=True)) == [aks[2]]


def test_choosing_more_keys_than_the_plan_allows_rerenders_with_an_error(owner) -> None:
    pks = [provider_key(owner.account, n) for n in range(2)]
    response = owner.client.post(
        reverse("billing:keys_keep"),
        {"provider_keys": [str(k.public_id) for k in pks], "api_keys": []},
    )
    assert response.status_code == 200
    assert b"keeps 1 provider key" in response.content


def test_keeping_a_key_whose_provider_key_is_disabled_is_refused(owner) -> None:
    pks = [provider_key(owner.account, n) for n in range(2)]
    ak = api_key(owner.account, pks[1], 1)
    response = owner.client.post(
        reverse("billing:keys_keep"),
        {"provider_keys": [str(pks[0].public_id)], "api_keys": [str(ak.public_id)]},
    )
    assert response.status_code == 200
    assert b"keep that provider key too" in response.content


def test_outsiders_keys_cannot_be_chosen(owner, outsider) -> None:
    theirs = provider_key(outsider.account, 1)
    response = owner.client.post(
        reverse("billing:keys_keep"), {"provider_keys": [str(theirs.public_id)]}
    )
    assert response.status_code == 200
    theirs.refresh_from_db()
    assert theirs.disabled_at is None


def test_upgrading_again_restores_disabled_keys(owner) -> None:
    from billing.entitlements import plan_for
    from billing.services import subscription_changed

    sub = subscription(owner.account, plan="pro")
    pk = provider_key(owner.account, 1)
    [api_key(owner.account, pk, n) for n in range(3)]
    downgrade(sub)
    assert ApiKey.objects.filter(disabled_at__isnull=True).count() == 1
    new = subscription(owner.account, plan="pro", sub_id="sub_Again000000001", status="created")
    before = plan_for(owner.account)
    new.status = Subscription.Status.ACTIVE
    new.save()
    subscription_changed(sub=new, before_plan=before, reason="test")
    assert ApiKey.objects.filter(disabled_at__isnull=True).count() == 3


def test_abandoned_checkout_ending_sends_no_notice(owner) -> None:
    sub = subscription(owner.account, plan="pro", status="created")
    sub.started_at = None
    sub.save()
    assert downgrade(sub) == []
    assert not BillingNotice.objects.exists()
