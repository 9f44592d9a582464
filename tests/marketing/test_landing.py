from __future__ import annotations

from django.urls import reverse

from marketing.models import WaitlistSignup

HX = {"HX-Request": "true"}


def test_landing_shows_hero_steps_pricing_and_cta(client, db) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/").content.decode()
    assert "Hard budget limits for LLM APIs" in body
    assert "Start free — no credit card" in body
    for text in ("$0", "$19 / month", "$49 / month", "up to $100.00 / month", "How it works"):
        assert text in body


def test_signed_in_visitor_goes_to_dashboard(owner) -> None:  # type: ignore[no-untyped-def]
    assert owner.client.get("/")["Location"] == reverse("dashboard")


def test_waitlist_with_htmx_swaps_in_thank_you(client, db) -> None:  # type: ignore[no-untyped-def]
    response = client.post(reverse("waitlist"), {"email": " Ravi@Example.com "}, headers=HX)
    assert response.status_code == 200
    body = response.content.decode()
    assert 'data-testid="waitlist-thanks"' in body and "<html" not in body
    assert list(WaitlistSignup.objects.values_list("email", flat=True)) == ["ravi@example.com"]


def test_waitlist_without_js_redirects_to_thank_you(client, db) -> None:  # type: ignore[no-untyped-def]
    response = client.post(reverse("waitlist"), {"email": "a@example.com"})
    assert response.status_code == 302
    assert b'data-testid="waitlist-thanks"' in client.get(response["Location"]).content


def test_waitlist_deduplicates_normalised_email(client, db) -> None:  # type: ignore[no-untyped-def]
    for email in ("a@example.com", "A@EXAMPLE.COM ", "a@example.com"):
        client.post(reverse("waitlist"), {"email": email}, headers=HX)
    assert WaitlistSignup.objects.count() == 1


def test_waitlist_invalid_email_rerenders_with_error(client, db) -> None:  # type: ignore[no-untyped-def]
    response = client.post(reverse("waitlist"), {"email": "not-an-email"}, headers=HX)
    assert response.status_code == 200 and b'data-testid="waitlist-error"' in response.content
    assert not WaitlistSignup.objects.exists()


def test_waitlist_is_rate_limited_per_ip(client, db, settings) -> None:  # type: ignore[no-untyped-def]
    from django.core.cache import cache

    cache.clear()
    settings.WAITLIST_RATE_LIMIT = 3
    for i in range(3):
        client.post(
            reverse("waitlist"), {"email": f"p{i}@example.com"}, headers=HX, REMOTE_ADDR="10.0.0.9"
        )
    blocked = client.post(
        reverse("waitlist"), {"email": "p9@example.com"}, headers=HX, REMOTE_ADDR="10.0.0.9"
    )
    assert blocked.status_code == 200 and b"Too many sign-ups" in blocked.content
    other = client.post(
        reverse("waitlist"), {"email": "q@example.com"}, headers=HX, REMOTE_ADDR="10.0.0.10"
    )
    assert b'data-testid="waitlist-thanks"' in other.content
    assert WaitlistSignup.objects.count() == 4
