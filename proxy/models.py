"""The response cache's store on the embedded default (Redis holds it in production)."""

from __future__ import annotations

from django.db import models

from accounts.models import Account


class CachedResponse(models.Model):
    """One cached answer (or an in-flight marker) of one account.

    `value` is NULL while the first identical request is still upstream: `locked_until`
    then tells other processes to wait for it rather than call the provider too.
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+")
    digest = models.CharField(max_length=64)
    value = models.BinaryField(null=True)
    expires_at = models.DateTimeField()
    locked_until = models.DateTimeField(null=True)

    class Meta:
        constraints = [
            # The cache lookup (account, digest) and the single-flight insert race on it.
            models.UniqueConstraint(
                fields=["account", "digest"], name="cachedresponse_account_digest_uniq"
            ),
        ]
        indexes = [
            # Purging an account's expired entries when a new one is written.
            models.Index(fields=["account", "expires_at"], name="cachedresponse_acct_expiry"),
        ]

    def __str__(self) -> str:
        return f"cache {self.digest[:12]}…"
