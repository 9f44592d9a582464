"""The account kill-switch. (A key's lives in keys.services.api_key_set_paused.)"""

from __future__ import annotations

import logging

from django.utils import timezone

from accounts.models import Account, User

log = logging.getLogger(__name__)


def account_set_paused(*, account: Account, actor: User | None, paused: bool) -> bool:
    """Pause every proxied request of the account at once, or resume. Returns whether
    anything changed. A conditional UPDATE keeps the first pause time when two clicks race."""
    if paused:
        now = timezone.now()
        changed = Account.objects.filter(pk=account.pk, paused_at__isnull=True).update(
            paused_at=now
        )
        if changed:
            account.paused_at = now
    else:
        changed = Account.objects.filter(pk=account.pk, paused_at__isnull=False).update(
            paused_at=None
        )
        account.paused_at = None
    if changed:
        log.info(
            "account %s %s by %s",
            account.public_id,
            "paused" if paused else "resumed",
            actor.pk if actor else "system",
        )
    return bool(changed)
