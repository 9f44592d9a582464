"""Resolving the `bllm_` key of a request, with a short per-worker cache.

Resolution is one indexed query (keys.services.api_key_resolve), run on the event loop
on PostgreSQL (proxy/keydb.py) and in a worker thread elsewhere. Doing it on every
request costs a database round trip, so each worker
keeps a resolved key for PROXY_KEY_CACHE_SECONDS (default 2 s). The trade-off: revoking
or pausing a key takes effect on every worker within that many seconds instead of at
once. Spend caps are not affected (the ledger is asked on every request), only the
revoked/paused flags. Entries are keyed by a SHA-256 of the presented key, never the key
itself, and unknown keys are not cached (a flood of bad keys cannot grow the cache).

A key in use never makes its requests wait for the database: in the last quarter of an
entry's life the first request to use it starts a refresh in the background and is
answered from the entry (a key in steady use is read every 3/4 PROXY_KEY_CACHE_SECONDS).
A key that is not cached is resolved once however many of its requests arrive together:
they share the one resolution. (Before, every request in flight when an entry ran out
resolved the key on its own, all queued on the database pool at once.)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from keys.services import (
    LAST_USED_RESOLUTION,
    ResolvedKey,
    api_key_mark_used,
    api_key_resolve,
)

from . import keydb
from .errors import ProxyError

logger = logging.getLogger(__name__)

_MAX_ENTRIES = 10_000
_clock = time.monotonic  # a name of its own so that tests can move this clock alone


@dataclass(slots=True)
class _Entry:
    expires: float  # counted from when the resolution started, so never later than it may
    refresh_after: float
    key: ResolvedKey


_cache: dict[bytes, _Entry] = {}
# When this worker last recorded each key (by id) as used.
_marked: dict[int, float] = {}
_MARK_EVERY = LAST_USED_RESOLUTION.total_seconds()
# Resolutions in progress, by slot: requests for a key that is not cached share one.
_resolving: dict[bytes, asyncio.Task[tuple[float, ResolvedKey | None]]] = {}


def _resolve_sync(raw: str) -> ResolvedKey | None:
    try:
        resolved = api_key_resolve(raw=raw)
        if resolved is not None and _mark_due(resolved.api_key_id):
            api_key_mark_used(api_key_id=resolved.api_key_id)
        return resolved
    finally:
        # No request_finished signal runs on /v1: hand the connection back ourselves.
        close_old_connections()


def _mark_used_sync(api_key_id: int) -> None:
    try:
        api_key_mark_used(api_key_id=api_key_id)
    finally:
        close_old_connections()


def _mark_due(api_key_id: int) -> bool:
    """Whether to record the key as used now. The UPDATE is conditional and writes at
    most once per LAST_USED_RESOLUTION per key; this worker does not even send it again
    within that time (it would touch no row, and would double the cost of a refresh)."""
    now = _clock()
    if _marked.get(api_key_id, now - _MARK_EVERY) > now - _MARK_EVERY:
        return False
    if len(_marked) >= _MAX_ENTRIES:
        _marked.clear()
    _marked[api_key_id] = now
    return True


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
    try:
        resolved = await (_resolve(raw) if ttl <= 0 else _cached_resolve(raw, ttl))
    except (DatabaseError, psycopg.Error, TimeoutError, OSError) as exc:
        logger.warning("could not resolve a bllm_ key: %r", exc)
        raise ProxyError(
            503,
            "BudgetLLM could not check your API key: its database did not answer. Nothing "
            "was sent to the provider; retry in a moment.",
            type_="server_error",
            code="key_store_unavailable",
        ) from None
    if resolved is None:
        raise ProxyError(
            401,
            "Incorrect API key provided. Use a BudgetLLM key (bllm_…) that has not been "
            "revoked; manage your keys at /keys/.",
            code="invalid_api_key",
            retryable=False,
        )
    return resolved


async def _cached_resolve(raw: str, ttl: float) -> ResolvedKey | None:
    slot = hashlib.sha256(raw.encode()).digest()
    now = _clock()
    entry = _cache.get(slot)
    if entry is not None and entry.expires > now:
        if entry.refresh_after <= now:
            _resolution(slot, raw, ttl)  # in the background: this request goes on
        return entry.key
    for _ in range(2):
        # Shielded: a waiter that is cancelled (its client hung up) must not cancel the
        # resolution the other waiters share.
        started, resolved = await asyncio.shield(_resolution(slot, raw, ttl))
        # A shared resolution that began (read the database) `ttl` or more before this
        # request arrived, say a slow background refresh, may predate a revocation this
        # request must see. The second one began after it arrived.
        if started + ttl > now:
            break
    return resolved


async def _resolve(raw: str) -> ResolvedKey | None:
    if not (raw.startswith("bllm_") and len(raw) < 200):
        return None
    if not keydb.on_postgresql():
        return await sync_to_async(_resolve_sync, thread_sensitive=False)(raw)
    resolved = await keydb.resolve(raw)  # on the loop: no thread, no stall
    if resolved is not None and _mark_due(resolved.api_key_id):
        _in_background(sync_to_async(_mark_used_sync, thread_sensitive=False)(resolved.api_key_id))
    return resolved


_background: set[asyncio.Task[Any]] = set()


def _in_background(coro: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.ensure_future(coro)
    _background.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        _background.discard(t)
        if not t.cancelled() and t.exception() is not None:
            logger.warning("recording a bllm_ key as used failed", exc_info=t.exception())

    task.add_done_callback(done)


def _resolution(
    slot: bytes, raw: str, ttl: float
) -> asyncio.Task[tuple[float, ResolvedKey | None]]:
    """The resolution of the key in `slot`: the one in progress, or a new one that
    stores its outcome in the cache. Its result: when it began, and the key or None."""
    task = _resolving.get(slot)
    if task is not None and task.get_loop() is asyncio.get_running_loop():
        return task
    task = asyncio.ensure_future(_resolve_into_cache(slot, raw, ttl))
    _resolving[slot] = task

    def done(t: asyncio.Task[tuple[float, ResolvedKey | None]]) -> None:
        if _resolving.get(slot) is t:
            del _resolving[slot]
        if not t.cancelled() and t.exception() is not None:
            # Waiters see the error themselves; one started in the background has none,
            # and its entry simply runs out (the next request then resolves in the open).
            logger.warning("resolving a bllm_ key failed", exc_info=t.exception())

    task.add_done_callback(done)
    return task


async def _resolve_into_cache(
    slot: bytes, raw: str, ttl: float
) -> tuple[float, ResolvedKey | None]:
    started = _clock()
    resolved = await _resolve(raw)
    if resolved is None:
        _cache.pop(slot, None)  # revoked (or never valid): refused from now on
        return started, None
    if len(_cache) >= _MAX_ENTRIES:
        _cache.clear()
    _cache[slot] = _Entry(started + ttl, started + ttl * 0.75, resolved)
    return started, resolved
