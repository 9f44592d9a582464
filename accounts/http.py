from __future__ import annotations

from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails

from .models import User


class AuthedRequest(HttpRequest):
    """Type for views behind @login_required: `request.user` is a real User, and
    django-htmx's details are attached."""

    user: User  # type: ignore[assignment]
    htmx: HtmxDetails
