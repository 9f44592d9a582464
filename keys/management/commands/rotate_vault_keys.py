"""Re-encrypt every stored provider key under the newest vault key.

Rotation: put a new Fernet key FIRST in VAULT_KEYS (keep the old ones after it),
restart, run this command, then drop the old keys from VAULT_KEYS.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from keys.services import provider_key_rotate_all


class Command(BaseCommand):
    help = "Re-encrypt every stored provider key under the first key in VAULT_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        rotated, failed = provider_key_rotate_all()
        self.stdout.write(
            f"Re-encrypted {rotated} provider key(s) under the newest of "
            f"{len(settings.VAULT_KEYS)} vault key(s)."
        )
        if failed:
            raise CommandError(
                f"{failed} provider key(s) could not be decrypted with any key in VAULT_KEYS "
                "and were left as they are. Do not remove old vault keys until this is 0."
            )
        if len(settings.VAULT_KEYS) > 1:
            self.stdout.write(
                "All keys now open with the first vault key; you may drop the others."
            )
