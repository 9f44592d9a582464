"""Exact-match response cache, scoped per account, with single-flight.

Key: SHA-256 over the endpoint and a canonical JSON form of the request body — keys
sorted, nulls dropped, and the fields that do not change the answer (`stream`,
`stream_options`, `user`, `metadata`, `store`, ...) removed. The account id is part of
the storage key, so one account can never read another's entries.

Store: Redis when REDIS_URL is set (one round trip to look up *and* claim the
single-flight lock, one to write *and* unlock), else the `CachedResponse` table, which
every process of an embedded run shares.

TTL: an entry is kept for the TTL of the key that wrote it, and served only to keys whose
own TTL it has not outlived (entries are stamped with their write time): the account's
keys share entries, and a key's TTL can be lowered after entries were written under it.

Single-flight: the first request for a key becomes the leader; identical requests in the
same process await its future, those in other processes poll the store until the leader
writes the answer (or gives up, when they go upstream themselves).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
import weakref
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, close_old_connections
from django.db.models import Q
from django.utils import timezone

from budgets.resp import LeanRedis, LeanScript, lean_redis

# Fields that do not change what the model answers.
_IGNORED_FIELDS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "prompt_cache_key",
        "prompt_cache_retention",
        "service_tier",
    }
)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    body: bytes  # the full (non-streaming) JSON answer, exactly as the provider sent it
    cost_micros: int  # what the original answer cost: a hit records it as saved
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    stored_at_ms: int = 0  # when the store wrote it (Unix ms): a key reads it within its TTL

    def dumps(self) -> bytes:
        # The write time last: the Redis lookup script reads it from there.
        head = json.dumps(
            [
                self.cost_micros,
                self.input_tokens,
                self.cached_tokens,
                self.output_tokens,
                self.stored_at_ms,
            ]
        ).encode()
        return head + b"\n" + self.body

    @classmethod
    def loads(cls, value: bytes) -> CacheEntry:
        head, _, body = value.partition(b"\n")
        cost, inp, cached, out, at = json.loads(head)
        return cls(body, int(cost), int(inp), int(cached), int(out), int(at))

    def stamped(self) -> CacheEntry:
        return dataclasses.replace(self, stored_at_ms=_now_ms())


def _now_ms() -> int:
    return int(time.time() * 1000)


# The stored entry's format, hashed into every key: a build never reads entries of another
# format (an older build's, or a newer one's after a rollback), which it would fail to load.
_ENTRY_FORMAT = 2  # 2: the write time in the head


def cache_digest(*, endpoint: str, body: dict[str, Any], upstream: tuple[object, ...] = ()) -> str:
    """`upstream`: where the answer comes from beyond the account (the provider key, and
    the OpenAI organization, project and beta headers passed on): an answer from another
    OpenAI organization carries its ids and encrypted reasoning, which only it can use."""
    canon = {k: v for k, v in body.items() if k not in _IGNORED_FIELDS and v is not None}
    text = json.dumps(
        [_ENTRY_FORMAT, endpoint, canon, upstream],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


USE, REFRESH, OFF = "use", "refresh", "off"


def cache_mode(headers: dict[str, str]) -> str:
    """How a request uses the cache. USE: answered from it when it can be, its answer
    stored. REFRESH (`Cache-Control: no-cache`, as in HTTP: do not answer from a stored
    copy): never answered from it, but its fresh answer replaces the stored one, so a
    client that distrusts an entry does not leave it for the next request. OFF
    (`no-store`, `X-BudgetLLM-Cache: off`): neither read nor written."""
    control = headers.get("cache-control", "").lower()
    if "no-store" in control:
        return OFF
    if headers.get("x-budgetllm-cache", "").strip().lower() in ("off", "bypass", "0", "false"):
        return OFF
    return REFRESH if "no-cache" in control else USE


# --- stores ----------------------------------------------------------------------------

_HIT, _LEAD, _WAIT = "hit", "lead", "wait"

# GET the answer, else take the in-flight lock (NX): hit / lead / wait in one round trip.
# An answer written before ARGV[2] (Unix ms, the last number of its first line) is older
# than the reading key's TTL: it counts as absent, and the leader overwrites it.
_LOOKUP_OR_LOCK = """
local v = redis.call('GET', KEYS[1])
if v then
  local at = tonumber(string.match(v, '^%[[^\\n]-(%d+)%]\\n'))
  if at and at >= tonumber(ARGV[2]) then return v end
end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
"""


class RedisStore:
    def __init__(self, url: str) -> None:
        self._url = url

    def _client(self) -> tuple[LeanRedis, LeanScript]:
        client = lean_redis(self._url, timeout=5.0)
        script = self._scripts.get(client)
        if script is None:
            script = self._scripts[client] = client.register_script(_LOOKUP_OR_LOCK)
        return client, script

    _scripts: weakref.WeakKeyDictionary[LeanRedis, LeanScript] = weakref.WeakKeyDictionary()

    @staticmethod
    def _keys(account_id: int, digest: str) -> list[str]:
        return [f"bllm:cache:{account_id}:{digest}", f"bllm:cache-lock:{account_id}:{digest}"]

    async def lookup_or_lock(
        self, account_id: int, digest: str, lock_seconds: int, max_age: int
    ) -> tuple[str, CacheEntry | None]:
        _, script = self._client()
        oldest = _now_ms() - max_age * 1000
        result = await script(
            keys=self._keys(account_id, digest), args=[lock_seconds * 1000, oldest]
        )
        if isinstance(result, bytes):
            return _HIT, CacheEntry.loads(result)
        return (_LEAD if result == 1 else _WAIT), None

    async def put_and_unlock(
        self, account_id: int, digest: str, entry: CacheEntry | None, ttl: int, *, unlock: bool
    ) -> None:
        client, _ = self._client()
        key, lock = self._keys(account_id, digest)
        commands: list[tuple[Any, ...]] = []
        if entry is not None:
            commands.append(("SET", key, entry.stamped().dumps(), "EX", ttl))
        if unlock:
            commands.append(("DEL", lock))
        if commands:
            await client.execute_many(commands)

    async def close(self) -> None:
        await self._client()[0].aclose()


def _sql_lookup_or_lock(
    account_id: int, digest: str, lock_seconds: int, max_age: int
) -> tuple[str, CacheEntry | None]:
    from .models import CachedResponse

    try:
        now = timezone.now()
        row = (
            CachedResponse.objects.filter(account_id=account_id, digest=digest)
            .only("value", "expires_at", "locked_until")
            .first()
        )
        if row is not None and row.value is not None and row.expires_at > now:
            entry = CacheEntry.loads(bytes(row.value))
            # Older than the reading key's TTL: stale for it, fetched again (as expired).
            if entry.stored_at_ms >= _now_ms() - max_age * 1000:
                return _HIT, entry
        until = now + timedelta(seconds=lock_seconds)
        if row is None:
            try:
                CachedResponse.objects.create(
                    account_id=account_id, digest=digest, expires_at=now, locked_until=until
                )
            except IntegrityError:
                return _WAIT, None
            return _LEAD, None
        # Claim the row only if nobody holds a live lock on it (conditional UPDATE).
        claimed = (
            CachedResponse.objects.filter(pk=row.pk)
            .filter(Q(locked_until__isnull=True) | Q(locked_until__lte=now))
            .update(locked_until=until)
        )
        return (_LEAD if claimed else _WAIT), None
    finally:
        close_old_connections()


def _sql_put_and_unlock(
    account_id: int, digest: str, entry: CacheEntry | None, ttl: int, unlock: bool = True
) -> None:
    from .models import CachedResponse

    try:
        now = timezone.now()
        if entry is None:
            if unlock:
                CachedResponse.objects.filter(account_id=account_id, digest=digest).update(
                    locked_until=None
                )
            return
        values: dict[str, Any] = {
            "value": entry.stamped().dumps(),
            "expires_at": now + timedelta(seconds=ttl),
        }
        if unlock:
            values["locked_until"] = None
        CachedResponse.objects.update_or_create(
            account_id=account_id, digest=digest, defaults=values
        )
        # Keep the table small: drop this account's expired entries that no live leader
        # holds (a lock past its time is a leader whose worker died).
        CachedResponse.objects.filter(account_id=account_id, expires_at__lt=now).filter(
            Q(locked_until__isnull=True) | Q(locked_until__lt=now)
        ).delete()
    finally:
        close_old_connections()


class SqlStore:
    async def lookup_or_lock(
        self, account_id: int, digest: str, lock_seconds: int, max_age: int
    ) -> tuple[str, CacheEntry | None]:
        return await sync_to_async(_sql_lookup_or_lock, thread_sensitive=False)(
            account_id, digest, lock_seconds, max_age
        )

    async def put_and_unlock(
        self, account_id: int, digest: str, entry: CacheEntry | None, ttl: int, *, unlock: bool
    ) -> None:
        await sync_to_async(_sql_put_and_unlock, thread_sensitive=False)(
            account_id, digest, entry, ttl, unlock
        )

    async def close(self) -> None:
        return None


_store: RedisStore | SqlStore | None = None


def cache_store() -> RedisStore | SqlStore:
    global _store
    if _store is None:
        _store = RedisStore(settings.REDIS_URL) if settings.REDIS_URL else SqlStore()
    return _store


# --- single-flight ---------------------------------------------------------------------


@dataclass(slots=True)
class Flight:
    """Leadership for one key: the holder calls upstream and must call `cache_finish`."""

    account_id: int
    digest: str
    future: asyncio.Future[CacheEntry | None]
    owns_lock: bool = True  # False for a REFRESH: it took no lock, so it frees none


_local: dict[tuple[int, str], asyncio.Future[CacheEntry | None]] = {}


async def cache_get_or_lead(
    *, account_id: int, digest: str, max_age: int
) -> CacheEntry | Flight | None:
    """A cached answer at most `max_age` seconds old (the reading key's TTL), leadership of
    this key, or None (go upstream without caching)."""
    wait_seconds = int(settings.PROXY_CACHE_WAIT_SECONDS)
    slot = (account_id, digest)
    pending = _local.get(slot)
    if pending is not None:
        try:
            return await asyncio.wait_for(asyncio.shield(pending), wait_seconds)
        except TimeoutError:
            return None
    future: asyncio.Future[CacheEntry | None] = asyncio.get_running_loop().create_future()
    _local[slot] = future
    store = cache_store()
    try:
        deadline = asyncio.get_running_loop().time() + wait_seconds
        delay = 0.01
        while True:
            state, entry = await store.lookup_or_lock(account_id, digest, wait_seconds, max_age)
            if state == _HIT:
                _resolve(slot, future, entry)
                return entry
            if state == _LEAD:
                return Flight(account_id, digest, future)
            # Another process is fetching this answer: poll until it lands or we time out.
            if asyncio.get_running_loop().time() + delay > deadline:
                _resolve(slot, future, None)
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
    except BaseException:
        _resolve(slot, future, None)
        raise


def _resolve(
    slot: tuple[int, str], future: asyncio.Future[CacheEntry | None], entry: CacheEntry | None
) -> None:
    if _local.get(slot) is future:
        del _local[slot]
    if not future.done():
        future.set_result(entry)


def cache_refresh_flight(*, account_id: int, digest: str) -> Flight:
    """Leadership for a REFRESH request, taken without asking the store: its fresh answer
    is written over the stored one when it is cacheable. Until then the stored answer
    stays, for identical requests meanwhile, and stays for good if the refresh fails
    (a 402, a provider error): a client's distrust does not cost the others their hit.
    It takes no lock and frees none (another request may be leading a miss)."""
    loop = asyncio.get_running_loop()
    return Flight(account_id, digest, loop.create_future(), owns_lock=False)


async def cache_finish(flight: Flight, entry: CacheEntry | None, *, ttl: int) -> None:
    """Store the leader's answer (None: nothing cacheable) and wake the waiters."""
    try:
        await cache_store().put_and_unlock(
            flight.account_id, flight.digest, entry, ttl, unlock=flight.owns_lock
        )
    finally:
        _resolve((flight.account_id, flight.digest), flight.future, entry)
