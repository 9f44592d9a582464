"""Keep cached caps honest: any saved or deleted Cap / ModelPrice re-reads on the next
request, in every process. (Not a business rule; cache invalidation only.)"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import Cap, ModelPrice


@receiver(post_save, sender=Cap)
@receiver(post_delete, sender=Cap)
@receiver(post_save, sender=ModelPrice)
@receiver(post_delete, sender=ModelPrice)
def _caps_changed(sender: type, instance: Cap | ModelPrice, **kwargs: Any) -> None:
    from .services import caps_changed

    account_id = instance.account_id
    # After commit: a version bumped before the row is visible could be read, cached
    # with the old row, and never bumped again.
    transaction.on_commit(lambda: caps_changed(account_id=account_id))
