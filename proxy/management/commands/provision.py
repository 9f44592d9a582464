"""`manage.py provision`: set up an account, its provider key and a capped bllm_ key.

For self-hosters who script their setup:

    manage.py provision --email ravi@example.com --openai-key sk-… \\
        --monthly-cap-usd 50 --daily-cap-usd 5 --run-cap-usd 0.50

The provider key is checked first (its form, then against the provider unless
--no-validate); then, in one transaction, the account is created or reused by email, the
provider key stored or reused if the account already stores it, and a new bllm_ key
issued with the caps given. The key is printed on the last line. A refusal at any step
leaves nothing written.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from accounts.models import Membership
from accounts.services import user_get_or_create
from budgets.caps import CapInvalid, CapSpec, cap_upsert
from budgets.models import MICROS_PER_USD, Cap
from budgets.money import usd
from keys import vault
from keys.models import ProviderKey
from keys.services import (
    KeyServiceError,
    api_key_create,
    provider_key_add,
    provider_key_clean,
    provider_key_hint,
    provider_key_validate,
)


def _micros(value: str, flag: str) -> int:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise CommandError(f"{flag} must be an amount in dollars such as 5 or 0.50") from None
    if not amount.is_finite() or amount <= 0:
        raise CommandError(f"{flag} must be above 0")
    return int(amount * MICROS_PER_USD)


class Command(BaseCommand):
    help = "Create (or reuse) an account, store its OpenAI key and issue a capped bllm_ key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--email", required=True)
        parser.add_argument("--openai-key", required=True, help="sk-… (stored encrypted)")
        parser.add_argument("--timezone", default="UTC", help="IANA zone for day/month caps")
        parser.add_argument("--key-name", default="default", help="name of the bllm_ key")
        parser.add_argument("--monthly-cap-usd", help="account cap per calendar month")
        parser.add_argument("--daily-cap-usd", help="account cap per day")
        parser.add_argument("--key-monthly-cap-usd", help="cap of the new key per month")
        parser.add_argument("--key-daily-cap-usd", help="cap of the new key per day")
        parser.add_argument("--run-cap-usd", help="cap per agent run (X-BudgetLLM-Run-Id)")
        parser.add_argument(
            "--no-validate",
            action="store_true",
            help="store the OpenAI key without checking it against the provider",
        )

    @sensitive_variables("options", "raw_key", "key")
    def handle(self, *args: Any, **options: Any) -> None:
        raw_key = options["openai_key"].strip()
        given = [
            (Cap.Scope.ACCOUNT, Cap.Period.MONTH, options["monthly_cap_usd"], "--monthly-cap-usd"),
            (Cap.Scope.ACCOUNT, Cap.Period.DAY, options["daily_cap_usd"], "--daily-cap-usd"),
            (
                Cap.Scope.KEY,
                Cap.Period.MONTH,
                options["key_monthly_cap_usd"],
                "--key-monthly-cap-usd",
            ),
            (Cap.Scope.KEY, Cap.Period.DAY, options["key_daily_cap_usd"], "--key-daily-cap-usd"),
            (Cap.Scope.RUN, Cap.Period.RUN, options["run_cap_usd"], "--run-cap-usd"),
        ]
        wanted = [(s, p, _micros(v, f)) for s, p, v, f in given if v is not None]

        try:
            # The key is checked before anything is written: a key that is malformed or
            # that the provider refuses must not leave an account behind without it.
            key = provider_key_clean(raw_key)
            if not options["no_validate"]:
                provider_key_validate(raw_key=key)
            # One transaction: a refusal part-way (a cap above the plan, the plan's key
            # limit) leaves nothing half set up.
            with transaction.atomic():
                user, created = user_get_or_create(
                    email=options["email"], timezone_name=options["timezone"]
                )
                account = Membership.objects.get(user=user, role=Membership.Role.OWNER).account
                provider_key, reused = self._provider_key(account, user, key)
                api_key, raw = api_key_create(
                    account=account, actor=user, provider_key=provider_key, name=options["key_name"]
                )
                caps: list[Cap] = [
                    cap_upsert(
                        account=account,
                        actor=user,
                        spec=CapSpec(
                            scope=scope,
                            period=period,
                            limit_micros=limit,
                            api_key=api_key if scope != Cap.Scope.ACCOUNT else None,
                        ),
                    )
                    for scope, period, limit in wanted
                ]
        except (KeyServiceError, CapInvalid) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"{'Created' if created else 'Reusing'} account {account.public_id} ({user.email})"
        )
        if reused:
            self.stdout.write(f"Reusing the stored provider key {provider_key.hint}")
        for cap in caps:
            self.stdout.write(f"{cap.label}: {usd(cap.limit_micros)}")
        self.stdout.write(
            f"Provider key {provider_key.hint}; BudgetLLM key '{api_key.name}' (shown once):"
        )
        self.stdout.write(raw)

    @sensitive_variables("key")
    def _provider_key(self, account: Any, user: Any, key: str) -> tuple[ProviderKey, bool]:
        """The account's stored copy of `key` (reused: True), or `key` stored now; it was
        checked against the provider already."""
        hint = provider_key_hint(key)
        for existing in ProviderKey.objects.filter(account=account, hint=hint, disabled_at=None):
            if vault.decrypt(existing.ciphertext) == key:
                return existing, True
        return provider_key_add(account=account, actor=user, raw_key=key, validate=False), False
