from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def account(request: HttpRequest) -> dict[str, Any]:
    """Expose the signed-in user's account to templates (lazily, one query)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"account": None}
    from .services import account_for_user

    return {"account": account_for_user(user)}  # type: ignore[arg-type]
