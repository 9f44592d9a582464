from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings

LOGIN_CODE_MAIL = "account/email/login_code"


class AccountAdapter(DefaultAccountAdapter):
    """allauth hooks: the login-code mail also carries the one-click magic link."""

    def send_mail(self, template_prefix: str, email: str, context: dict[str, Any]) -> None:
        if template_prefix == LOGIN_CODE_MAIL and not context.get("reauthentication"):
            from .services import login_mail_link

            context = {
                **context,
                "magic_link": login_mail_link(request=context["request"], email=email),
                "expiry_minutes": settings.MAGIC_LINK_MAX_AGE // 60,
            }
        super().send_mail(template_prefix, email, context)
