"""The public site: the landing page's waitlist / newsletter sign-ups."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class WaitlistSignup(models.Model):
    # Normalised (trimmed, lower-cased): the unique constraint is the deduplication.
    email = models.EmailField(unique=True)
    source = models.CharField(max_length=32, default="landing")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.email
