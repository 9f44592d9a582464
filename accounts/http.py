from __future__ import annotations

from django.http import HttpRequest

from .models import User


class AuthedRequest(HttpRequest):
    """Type for views behind @login_required: `request.user` is a real User."""

    user: User  # type: ignore[assignment]
