from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def billing_notice(request: HttpRequest) -> dict[str, Any]:
    """The newest plan-change notice the signed-in account has not dismissed (a banner)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"billing_notice": None}
    from accounts.services import account_for_user

    from .models import BillingNotice

    account = account_for_user(user)  # type: ignore[arg-type]
    notice = (
        BillingNotice.objects.filter(account=account, dismissed_at__isnull=True)
        .order_by("-created_at")
        .first()
    )
    return {"billing_notice": notice}
