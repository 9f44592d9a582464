"""Resolving the `bllm_` key of a request, with a short per-worker cache.

Resolution is one indexed query (keys.services.api_key_resolve) run in a worker thread.
Doing it on every request costs a thread hop and a database round trip, so each worker
keeps a resolved key for PROXY_KEY_CACHE_SECONDS (default 2 s). The trade-off: revoking
or pausing a key takes effect on every worker within that many seconds instead of at
once. Spend caps are not affected (the ledger is asked on every request), only the
revoked/paused flags. Entries are keyed by a SHA-256 of the presented key, never the key
itself, and unknown keys are not cached (a flood of bad keys cannot grow the cache).
"""

from __future__ import annotations

import hashlib
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from keys.services import ResolvedKey, api_key_mark_used, api_key_resolve

from .errors import ProxyError

_MAX_ENTRIES = 10_000
_cache: dict[bytes, tuple[float, ResolvedKey]] = {}


def _resolve_sync(raw: str) -> ResolvedKey | None:
    try:
        resolved = api_key_resolve(raw=raw)
        if resolved is not None:
            # A conditional UPDATE that writes at most once a minute per key; with the
            # cache above it runs at most once per PROXY_KEY_CACHE_SECONDS per worker.
            api_key_mark_used(api_key_id=resolved.api_key_id)
        return resolved
    finally:
        # No request_finished signal runs on /v1: hand the connection back ourselves.
        close_old_connections()


def bearer_token(headers: dict[str, str]) -> str:
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ProxyError(
            401,
            "You didn't provide an API key. Send your BudgetLLM key as "
            "'Authorization: Bearer bllm_…' (in the OpenAI SDK: api_key='bllm_…').",
            code="missing_api_key",
            retryable=False,
        )
    return token


async def key_authenticate(headers: dict[str, str]) -> ResolvedKey:
    raw = bearer_token(headers)
    ttl = settings.PROXY_KEY_CACHE_SECONDS
    slot = hashlib.sha256(raw.encode()).digest()
    now = time.monotonic()
    if ttl > 0:
        cached = _cache.get(slot)
        if cached is not None and cached[0] > now:
            return cached[1]
    resolved = None
    if raw.startswith("bllm_") and len(raw) < 200:
        resolved = await sync_to_async(_resolve_sync, thread_sensitive=False)(raw)
    if resolved is None:
        _cache.pop(slot, None)
        raise ProxyError(
            401,
            "Incorrect API key provided. Use a BudgetLLM key (bllm_…) that has not been "
            "revoked; manage your keys at /keys/.",
            code="invalid_api_key",
            retryable=False,
        )
    if ttl > 0:
        if len(_cache) >= _MAX_ENTRIES:
            _cache.clear()
        _cache[slot] = (now + ttl, resolved)
    return resolved
