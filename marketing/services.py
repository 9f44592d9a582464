"""Waitlist sign-ups: deduplicated by normalised email, rate-limited per IP."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction

from accounts.models import normalise_email

from .models import WaitlistSignup


class WaitlistRateLimited(Exception):
    pass


def _over_limit(ip: str) -> bool:
    # Hash the address: the cache is no place to keep raw IPs longer than needed.
    key = "waitlist:ip:" + hashlib.sha256(ip.encode()).hexdigest()[:32]
    window = settings.WAITLIST_RATE_WINDOW_SECONDS
    if cache.add(key, 1, timeout=window):
        return False
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=window)
        return False
    return count > settings.WAITLIST_RATE_LIMIT


def waitlist_join(*, email: str, ip: str, source: str = "landing") -> tuple[WaitlistSignup, bool]:
    """Store the address once. Returns (signup, created); a repeat is not an error, and
    the answer never says whether the address was already there."""
    if _over_limit(ip):
        raise WaitlistRateLimited("Too many sign-ups from your network. Try again later.")
    email = normalise_email(email)
    existing = WaitlistSignup.objects.filter(email=email).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            return WaitlistSignup.objects.create(email=email, source=source[:32]), True
    except IntegrityError:  # a concurrent duplicate won the race
        return WaitlistSignup.objects.get(email=email), False
