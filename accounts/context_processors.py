from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject


def account(request: HttpRequest) -> dict[str, Any]:
    """Expose the account the user acts on, and the others they may switch to, to templates.

    The switcher's list is lazy: pages that never render the nav pay nothing for it.
    """
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"account": None, "switchable_accounts": []}
    from .services import account_for_request, accounts_for_user

    return {
        "account": account_for_request(request),
        "switchable_accounts": SimpleLazyObject(lambda: accounts_for_user(user)),  # type: ignore[arg-type]
    }
