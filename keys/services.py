"""Key workflows: the public surface of the keys app.

Provider keys (the customer's OpenAI key) live encrypted in the vault; `bllm_` keys
are what the customer's code presents to our proxy. The proxy calls
`api_key_resolve` on every request, so it is one indexed query and no writes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import string
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections, router, transaction
from django.db.models import Q
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts.models import Account, User
from billing.entitlements import entitlements_for

from . import vault
from .models import ApiKey, KeyAuditEvent, ProviderKey

# --- bllm_ key format ----------------------------------------------------------------
# bllm_ + 12-character lookup prefix + 32-character secret, all base62 so a double
# click selects the whole key. The prefix (~71 bits) is unique and indexed; the
# secret (~190 bits) never leaves the one-time reveal except as part of the digest.
API_KEY_SCHEME = "bllm_"
API_KEY_PREFIX_LEN = 12
API_KEY_SECRET_LEN = 32
API_KEY_LEN = len(API_KEY_SCHEME) + API_KEY_PREFIX_LEN + API_KEY_SECRET_LEN
_ALPHABET = string.ascii_letters + string.digits
_ALPHABET_SET = frozenset(_ALPHABET)

PROVIDER_VALIDATION_TIMEOUT_SECONDS = 10.0
# `last_used_at` is written at most this often per key, so a busy key costs one
# UPDATE a minute rather than one per request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


class KeyServiceError(Exception):
    """A refusal with a message that is safe and meant to be shown to the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProviderKeyInvalid(KeyServiceError):
    """The provider rejected the key (or it is not shaped like one). Nothing stored."""


class ProviderUnreachable(KeyServiceError):
    """We could not get an answer from the provider, so we could not check the key."""


class PlanLimitReached(KeyServiceError):
    """The account's plan allows no more keys of this kind."""


class ProviderKeyUnusable(KeyServiceError):
    """A bllm_ key was requested for a provider key that is disabled or not the account's."""


# --- Resolution (the proxy's hot path) --------------------------------------------------


@dataclass(frozen=True)
class ResolvedKey:
    api_key_id: int
    api_key_public_id: uuid.UUID
    api_key_name: str
    account_id: int
    account_timezone: str  # IANA
    account_paused: bool
    key_paused: bool  # paused_at set (kill-switch / breaker)
    provider: str  # "openai"
    # None when the provider key is disabled (plan downgrade) or gone: the proxy must
    # refuse with a clear message instead of calling upstream.
    provider_key_id: int | None
    provider_key_ciphertext: str | None  # decrypt only at the upstream call
    cache_ttl_seconds: int


def api_key_digest(raw: str) -> str:
    """HMAC-SHA256 of the whole raw key under KEY_HASH_SECRET (hex)."""
    return hmac.new(settings.KEY_HASH_SECRET.encode(), raw.encode(), hashlib.sha256).hexdigest()


def _api_key_prefix(raw: str) -> str | None:
    """The lookup prefix of a well-formed raw key, else None (checked before any query)."""
    if len(raw) != API_KEY_LEN or not raw.startswith(API_KEY_SCHEME):
        return None
    body = raw[len(API_KEY_SCHEME) :]
    if not _ALPHABET_SET.issuperset(body):
        return None
    return body[:API_KEY_PREFIX_LEN]


# The columns api_key_resolve reads, in order. Compiled to SQL once per database by the
# ORM (so names and joins follow the models), then executed directly: building the
# query with the ORM on every call cost ~0.8 ms of CPU, ten times the query itself.
_RESOLVE_COLUMNS = (
    "id",
    "public_id",
    "name",
    "digest",
    "revoked_at",
    "disabled_at",
    "paused_at",
    "cache_ttl_seconds",
    "account_id",
    "account__timezone",
    "account__paused_at",
    "provider_key_id",
    "provider_key__provider",
    "provider_key__ciphertext",
    "provider_key__disabled_at",
)
_resolve_sql: dict[str, str] = {}


def _resolve_statement(alias: str) -> str:
    sql = _resolve_sql.get(alias)
    if sql is None:
        # Served by the unique index on keys_apikey.prefix, plus primary-key joins to
        # the account (INNER) and the provider key (LEFT OUTER: it may be gone).
        query = ApiKey.objects.using(alias).filter(prefix="").values_list(*_RESOLVE_COLUMNS)
        sql, params = query.query.sql_with_params()
        if tuple(params) != ("",):  # pragma: no cover - guards the one-parameter shape
            raise RuntimeError(f"unexpected parameters in the resolve query: {params!r}")
        _resolve_sql[alias] = sql
    return sql


@sensitive_variables("raw")
def api_key_resolve(*, raw: str) -> ResolvedKey | None:
    """Resolve a presented `bllm_` key, or None for malformed / unknown / wrong / revoked /
    disabled keys. One query (unique prefix index + joins to the account and the provider
    key), no writes; the digest is compared in constant time."""
    prefix = _api_key_prefix(raw)
    if prefix is None:
        return None
    alias = router.db_for_read(ApiKey)
    with connections[alias].cursor() as cursor:
        cursor.execute(_resolve_statement(alias), [prefix])
        row = cursor.fetchone()
    return api_key_from_row(raw=raw, row=row)


def api_key_resolve_query(*, raw: str) -> tuple[str, str, list[str]] | None:
    """(database alias, SQL, parameters) of the one query `api_key_resolve` runs, for a
    caller that runs it itself (the proxy, on its event loop); None for a malformed key.
    Hand the row it returns to `api_key_from_row`."""
    prefix = _api_key_prefix(raw)
    if prefix is None:
        return None
    alias = router.db_for_read(ApiKey)
    return alias, _resolve_statement(alias), [prefix]


@sensitive_variables("raw")
def api_key_from_row(*, raw: str, row: Sequence[Any] | None) -> ResolvedKey | None:
    """The ResolvedKey for the row of the resolve query, or None (see `api_key_resolve`)."""
    if row is None:
        return None
    (
        api_key_id,
        public_id,
        name,
        digest,
        revoked_at,
        disabled_at,
        paused_at,
        cache_ttl_seconds,
        account_id,
        account_timezone,
        account_paused_at,
        provider_key_id,
        provider,
        ciphertext,
        provider_key_disabled_at,
    ) = row
    if not hmac.compare_digest(digest, api_key_digest(raw)):
        return None
    if revoked_at is not None or disabled_at is not None:
        return None
    usable = provider_key_id is not None and provider_key_disabled_at is None
    return ResolvedKey(
        api_key_id=api_key_id,
        # SQLite hands back the UUID as 32 hex characters, PostgreSQL as a UUID.
        api_key_public_id=public_id if isinstance(public_id, uuid.UUID) else uuid.UUID(public_id),
        api_key_name=name,
        account_id=account_id,
        account_timezone=account_timezone,
        account_paused=account_paused_at is not None,
        key_paused=paused_at is not None,
        provider=provider or ProviderKey.Provider.OPENAI,
        provider_key_id=provider_key_id if usable else None,
        provider_key_ciphertext=ciphertext if usable else None,
        cache_ttl_seconds=cache_ttl_seconds,
    )


def api_key_mark_used(*, api_key_id: int, at: datetime | None = None) -> None:
    """Record that a key was used, at most once per LAST_USED_RESOLUTION per key.

    A conditional UPDATE: no read, and a no-op (no row touched) while the stored time
    is recent, so the proxy can call it after every successful resolve."""
    at = at or timezone.now()
    ApiKey.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=at - LAST_USED_RESOLUTION),
        id=api_key_id,
    ).update(last_used_at=at)


# --- Provider keys ----------------------------------------------------------------------


def provider_key_hint(raw_key: str) -> str:
    """What the user sees of a provider key: `sk-…abcd`."""
    head = "sk-" if raw_key.startswith("sk-") else ""
    return f"{head}…{raw_key[-4:]}"


@sensitive_variables()
def provider_key_clean(raw_key: str) -> str:
    """The key without surrounding blanks; ProviderKeyInvalid when it cannot be an OpenAI
    key (checked before anything is stored or sent)."""
    key = raw_key.strip()
    if not key:
        raise ProviderKeyInvalid("Paste your OpenAI API key.")
    if not key.startswith("sk-"):
        raise ProviderKeyInvalid("That does not look like an OpenAI API key: they start with sk-.")
    if len(key) < 20 or len(key) > 400 or not key.isascii() or not key.isprintable():
        raise ProviderKeyInvalid(
            "That does not look like an OpenAI API key. Copy the whole key, with no spaces."
        )
    if any(ch.isspace() for ch in key):
        raise ProviderKeyInvalid("An OpenAI API key has no spaces inside. Copy it again.")
    return key


@sensitive_variables()
def provider_key_validate(*, raw_key: str) -> None:
    """Ask the provider whether the key works: GET {OPENAI_UPSTREAM_BASE_URL}/models.

    Raises ProviderKeyInvalid (401/403) or ProviderUnreachable. The provider's own error
    text is not passed on: OpenAI's 401 message echoes part of the key. Exceptions are
    raised `from None` so no chained traceback (whose frames hold the request headers)
    can reach an error page or a log."""
    base = settings.OPENAI_UPSTREAM_BASE_URL.rstrip("/")
    if not base.startswith(("https://", "http://")):
        raise ProviderUnreachable(
            f"OPENAI_UPSTREAM_BASE_URL must be an http(s) URL; it is {base!r}."
        )
    request = urllib.request.Request(  # noqa: S310 - scheme checked just above
        base + "/models",
        headers={"Authorization": f"Bearer {raw_key}", "Accept": "application/json"},
        method="GET",
    )
    status: int
    try:
        with urllib.request.urlopen(  # noqa: S310 - scheme checked above
            request, timeout=PROVIDER_VALIDATION_TIMEOUT_SECONDS
        ) as response:
            status = response.status
            body = response.read(1_000_000)
    except urllib.error.HTTPError as exc:
        status = exc.code
        body = b""
        exc.close()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ProviderUnreachable(
            f"Could not reach OpenAI at {base} to check the key ({type(reason).__name__}). "
            "Nothing was stored; try again in a moment."
        ) from None
    if status in (401, 403):
        raise ProviderKeyInvalid(
            "OpenAI rejected this key. Check that you copied the whole key and that it has "
            "not been revoked or restricted. Nothing was stored."
        )
    if status == 429:
        raise ProviderUnreachable(
            "OpenAI is rate-limiting this key right now (429), so it could not be checked. "
            "Try again in a minute."
        )
    if status != 200:
        raise ProviderUnreachable(
            f"OpenAI answered {status} while we checked the key. Nothing was stored; "
            "try again in a moment."
        )
    try:
        json.loads(body)
    except ValueError:
        raise ProviderUnreachable(
            f"{base}/models did not answer like OpenAI's API (not JSON). "
            "Check OPENAI_UPSTREAM_BASE_URL."
        ) from None


def _audit(*, account: Account, actor: User | None, action: str, subject: str) -> KeyAuditEvent:
    return KeyAuditEvent.objects.create(
        account=account, actor=actor, action=action, subject=subject[:200]
    )


def _plan_name(account: Account) -> str:
    return entitlements_for(account).plan.capitalize()


def _check_provider_key_limit(account: Account) -> None:
    limit = entitlements_for(account).max_provider_keys
    if ProviderKey.objects.filter(account=account).count() >= limit:
        plural = "key" if limit == 1 else "keys"
        raise PlanLimitReached(
            f"Your {_plan_name(account)} plan allows {limit} provider {plural}. "
            "Delete one or upgrade your plan to add another."
        )


@sensitive_variables()
def provider_key_add(
    *, account: Account, actor: User | None, raw_key: str, name: str = "", validate: bool = True
) -> ProviderKey:
    """Check an OpenAI key against the provider and store it encrypted.

    Raises ProviderKeyInvalid / ProviderUnreachable / PlanLimitReached; on any of them
    nothing is stored. `validate=False` skips only the call to the provider (offline
    setups: `manage.py provision --no-validate`)."""
    key = provider_key_clean(raw_key)
    # Fail fast on the plan before calling the provider; re-checked under the lock below.
    _check_provider_key_limit(account)
    if validate:
        provider_key_validate(raw_key=key)
    ciphertext = vault.encrypt(key)
    with transaction.atomic():
        # Serialise adds per account so two concurrent requests cannot both pass the limit.
        Account.objects.select_for_update().filter(pk=account.pk).first()
        _check_provider_key_limit(account)
        row = ProviderKey.objects.create(
            account=account,
            provider=ProviderKey.Provider.OPENAI,
            name=name.strip()[:100],
            ciphertext=ciphertext,
            hint=provider_key_hint(key),
        )
        _audit(
            account=account,
            actor=actor,
            action=KeyAuditEvent.Action.PROVIDER_KEY_ADDED,
            subject=str(row),
        )
    return row


@transaction.atomic
def provider_key_delete(*, provider_key: ProviderKey, actor: User | None) -> int:
    """Delete a provider key; every bllm_ key using it is revoked first (and audited).

    Returns how many bllm_ keys were revoked."""
    revoked = 0
    for api_key in ApiKey.objects.select_for_update().filter(
        provider_key=provider_key, revoked_at__isnull=True
    ):
        api_key_revoke(api_key=api_key, actor=actor)
        revoked += 1
    _audit(
        account=provider_key.account,
        actor=actor,
        action=KeyAuditEvent.Action.PROVIDER_KEY_DELETED,
        subject=str(provider_key),
    )
    provider_key.delete()
    return revoked


def provider_key_rotate_all() -> tuple[int, int]:
    """Re-encrypt every stored provider key under the newest vault key.

    Returns (rotated, failed). A key no vault key can open is left untouched and
    counted as failed (the command reports it; it never stops the others)."""
    rotated = failed = 0
    ids = list(ProviderKey.objects.order_by("id").values_list("id", flat=True))
    for pk in ids:
        with transaction.atomic():
            row = ProviderKey.objects.select_for_update().filter(pk=pk).first()
            if row is None:
                continue  # deleted meanwhile
            try:
                new = vault.rotate(row.ciphertext)
            except vault.VaultError:
                failed += 1
                continue
            ProviderKey.objects.filter(pk=pk).update(ciphertext=new)
            rotated += 1
    return rotated, failed


# --- bllm_ keys ---------------------------------------------------------------------------


def _api_key_generate() -> tuple[str, str]:
    prefix = "".join(secrets.choice(_ALPHABET) for _ in range(API_KEY_PREFIX_LEN))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(API_KEY_SECRET_LEN))
    return prefix, f"{API_KEY_SCHEME}{prefix}{secret}"


def api_key_label(api_key: ApiKey) -> str:
    """A safe description of a bllm_ key for people and the audit trail."""
    return f"{api_key.name} ({API_KEY_SCHEME}{api_key.prefix}…)"


@sensitive_variables("raw", "prefix")
def api_key_create(
    *, account: Account, actor: User | None, provider_key: ProviderKey, name: str
) -> tuple[ApiKey, str]:
    """Create a bllm_ key for one of the account's provider keys.

    Returns (row, raw key). The raw key exists only in this return value: show it once."""
    name = name.strip()
    if not name:
        raise KeyServiceError("Give the key a name, for example the app that will use it.")
    if len(name) > 100:
        raise KeyServiceError("Keep the name to 100 characters.")
    if provider_key.account_id != account.pk:
        raise ProviderKeyUnusable("That provider key does not belong to this account.")
    if provider_key.disabled_at is not None:
        raise ProviderKeyUnusable(
            "That provider key is disabled on your current plan; upgrade or delete other keys."
        )
    limit = entitlements_for(account).max_api_keys
    with transaction.atomic():
        # Serialise creates per account so two concurrent requests cannot both pass the limit.
        Account.objects.select_for_update().filter(pk=account.pk).first()
        if ApiKey.objects.filter(account=account, revoked_at__isnull=True).count() >= limit:
            plural = "key" if limit == 1 else "keys"
            raise PlanLimitReached(
                f"Your {_plan_name(account)} plan allows {limit} active BudgetLLM {plural}. "
                "Revoke one or upgrade your plan to create another."
            )
        for _attempt in range(3):
            prefix, raw = _api_key_generate()
            try:
                # A savepoint, so a (vanishingly rare) prefix collision can be retried.
                with transaction.atomic():
                    row = ApiKey.objects.create(
                        account=account,
                        provider_key=provider_key,
                        name=name,
                        prefix=prefix,
                        digest=api_key_digest(raw),
                    )
                break
            except IntegrityError:
                continue
        else:  # pragma: no cover - three 71-bit collisions in a row
            raise KeyServiceError("Could not create a unique key; please try again.")
        _audit(
            account=account,
            actor=actor,
            action=KeyAuditEvent.Action.API_KEY_CREATED,
            subject=api_key_label(row),
        )
    return row, raw


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: User | None) -> None:
    """Revoke a bllm_ key for good. Idempotent: revoking twice records one event."""
    now = timezone.now()
    # Conditional UPDATE: only the first of two concurrent revokes writes the audit event.
    changed = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=now)
    if not changed:
        return
    api_key.revoked_at = now
    _audit(
        account=api_key.account,
        actor=actor,
        action=KeyAuditEvent.Action.API_KEY_REVOKED,
        subject=api_key_label(api_key),
    )


@transaction.atomic
def api_key_set_paused(*, api_key: ApiKey, actor: User | None, paused: bool) -> None:
    """Pause (kill-switch) or resume a bllm_ key. A no-op when already in that state.

    `actor=None` means the system did it (the spend-spike breaker)."""
    now = timezone.now()
    if paused:
        changed = ApiKey.objects.filter(pk=api_key.pk, paused_at__isnull=True).update(paused_at=now)
        api_key.paused_at = now if changed else api_key.paused_at
        action = KeyAuditEvent.Action.API_KEY_PAUSED
    else:
        changed = ApiKey.objects.filter(pk=api_key.pk, paused_at__isnull=False).update(
            paused_at=None
        )
        api_key.paused_at = None
        action = KeyAuditEvent.Action.API_KEY_RESUMED
    if changed:
        _audit(account=api_key.account, actor=actor, action=action, subject=api_key_label(api_key))
