"""The per-worker cache of resolved bllm_ keys (proxy/auth.py).

Revocation and pauses take effect within PROXY_KEY_CACHE_SECONDS; a key in use is
refreshed in the background before its entry runs out; requests that arrive together
for a key that is not cached share one resolution.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from keys.services import (
    API_KEY_PREFIX_LEN,
    API_KEY_SECRET_LEN,
    ResolvedKey,
    api_key_revoke,
    api_key_set_paused,
)
from proxy import auth, keydb
from proxy.errors import ProxyError
from tests.proxy.conftest import Tenant

pytestmark = pytest.mark.django_db(transaction=True)

TTL = 2


def run[T](coro: Coroutine[Any, Any, T]) -> T:
    # A thread of its own: the browser tests' Playwright keeps a loop running in the
    # main thread for the whole session.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def bearer(tenant: Tenant) -> dict[str, str]:
    return {"authorization": f"Bearer {tenant.raw}"}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Iterator[list[float]]:
    settings.PROXY_KEY_CACHE_SECONDS = TTL
    now = [1000.0]
    monkeypatch.setattr(auth, "_clock", lambda: now[0])
    for state in (auth._cache, auth._resolving, auth._marked):
        state.clear()
    yield now
    for state in (auth._cache, auth._resolving, auth._marked):
        state.clear()
    keydb.close_now()  # each test's loops have ended: their connections must not linger


@pytest.fixture
def resolutions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the database resolutions; each takes 50 ms longer, so requests overlap them."""
    seen: list[str] = []
    real: Callable[[str], Awaitable[ResolvedKey | None]] = auth._resolve

    async def counted(raw: str) -> ResolvedKey | None:
        seen.append(raw)
        await asyncio.sleep(0.05)
        return await real(raw)

    monkeypatch.setattr(auth, "_resolve", counted)
    return seen


async def settled() -> None:
    """Until no resolution is in progress (bounded)."""
    for _ in range(200):
        if not auth._resolving:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a key resolution never finished")


def test_requests_arriving_together_for_an_uncached_key_share_one_resolution(
    tenant: Tenant, clock: list[float], resolutions: list[str]
) -> None:
    async def main() -> list[ResolvedKey]:
        return await asyncio.gather(*(auth.key_authenticate(bearer(tenant)) for _ in range(20)))

    keys = run(main())
    assert {k.api_key_id for k in keys} == {tenant.api_key.id}
    assert len(resolutions) == 1


def test_a_revoked_key_is_refused_once_its_entry_runs_out(
    tenant: Tenant, clock: list[float], resolutions: list[str]
) -> None:
    run(auth.key_authenticate(bearer(tenant)))
    api_key_revoke(api_key=tenant.api_key, actor=None)
    clock[0] += TTL * 0.4  # the documented delay: still served from the entry
    assert run(auth.key_authenticate(bearer(tenant))).api_key_id == tenant.api_key.id
    clock[0] += TTL * 0.6 + 0.01  # past the entry's life
    with pytest.raises(ProxyError) as caught:
        run(auth.key_authenticate(bearer(tenant)))
    assert caught.value.status == 401
    assert len(resolutions) == 2


def test_late_in_its_life_an_entry_is_refreshed_without_waiting(
    tenant: Tenant, clock: list[float], resolutions: list[str]
) -> None:
    async def main() -> tuple[ResolvedKey, ResolvedKey]:
        await auth.key_authenticate(bearer(tenant))
        await asyncio.to_thread(api_key_set_paused, api_key=tenant.api_key, actor=None, paused=True)
        clock[0] += TTL * 0.9
        served = await auth.key_authenticate(bearer(tenant))  # from the entry, at once
        assert auth._resolving, "a refresh should be running in the background"
        await settled()
        clock[0] += 0.01
        return served, await auth.key_authenticate(bearer(tenant))

    served, refreshed = run(main())
    assert not served.key_paused
    assert refreshed.key_paused
    assert len(resolutions) == 2  # the refresh; the last request was answered from it


def test_a_refresh_never_extends_the_life_of_what_it_read(
    tenant: Tenant, clock: list[float], resolutions: list[str]
) -> None:
    # An entry's life counts from when its resolution started, not when it finished.
    async def main() -> None:
        lookup = asyncio.ensure_future(auth.key_authenticate(bearer(tenant)))
        for _ in range(200):  # until the database read has started (bounded)
            if resolutions:
                break
            await asyncio.sleep(0.001)
        clock[0] += 1.5  # ... and takes a while
        await lookup

    run(main())
    entry = next(iter(auth._cache.values()))
    assert entry.expires == pytest.approx(1000.0 + TTL)


def test_a_cancelled_request_does_not_cancel_the_resolution_others_wait_for(
    tenant: Tenant, clock: list[float], resolutions: list[str]
) -> None:
    async def main() -> ResolvedKey:
        first = asyncio.ensure_future(auth.key_authenticate(bearer(tenant)))
        second = asyncio.ensure_future(auth.key_authenticate(bearer(tenant)))
        await asyncio.sleep(0.01)
        first.cancel()
        return await second

    assert run(main()).api_key_id == tenant.api_key.id
    assert len(resolutions) == 1


def test_unknown_keys_are_refused_and_never_cached(
    tenant: Tenant, clock: list[float], resolutions: list[str]
) -> None:
    run(auth.key_authenticate(bearer(tenant)))
    well_formed_unknown = "bllm_" + "Z" * API_KEY_PREFIX_LEN + "z" * API_KEY_SECRET_LEN
    right_prefix_wrong_secret = tenant.raw[:-API_KEY_SECRET_LEN] + "0" * API_KEY_SECRET_LEN
    for raw in (well_formed_unknown, right_prefix_wrong_secret, well_formed_unknown):
        with pytest.raises(ProxyError) as caught:
            run(auth.key_authenticate({"authorization": f"Bearer {raw}"}))
        assert caught.value.status == 401
    assert len(resolutions) == 4  # each unknown key went to the database: none was cached
    assert len(auth._cache) == 1
    assert not auth._resolving


def test_a_background_refresh_that_finds_the_key_revoked_ends_its_entry(
    tenant: Tenant, clock: list[float], resolutions: list[str]
) -> None:
    async def main() -> None:
        await auth.key_authenticate(bearer(tenant))
        await asyncio.to_thread(api_key_revoke, api_key=tenant.api_key, actor=None)
        clock[0] += TTL * 0.9
        await auth.key_authenticate(bearer(tenant))  # served from the entry; refresh starts
        await settled()
        with pytest.raises(ProxyError) as caught:
            await auth.key_authenticate(bearer(tenant))  # long before the entry's end
        assert caught.value.status == 401

    run(main())


def test_a_shared_resolution_older_than_the_ttl_is_not_used(
    tenant: Tenant, clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A background refresh reads the key, then stalls; meanwhile the key is revoked and
    # the entry runs out. A request arriving a full TTL after that read must not take
    # the stale answer: it resolves again, and is refused.
    real = auth._resolve
    release = asyncio.Event()
    calls: list[int] = []

    async def slow_first(raw: str) -> ResolvedKey | None:
        calls.append(1)
        resolved = await real(raw)
        if len(calls) == 2:
            await release.wait()  # the refresh: its answer is held back
        return resolved

    monkeypatch.setattr(auth, "_resolve", slow_first)

    async def main() -> None:
        await auth.key_authenticate(bearer(tenant))
        clock[0] += TTL * 0.9
        await auth.key_authenticate(bearer(tenant))  # starts the refresh, which stalls
        for _ in range(200):
            if len(calls) == 2 and auth._resolving:
                break
            await asyncio.sleep(0.01)
        await asyncio.to_thread(api_key_revoke, api_key=tenant.api_key, actor=None)
        clock[0] += TTL  # the entry is over; the refresh read the key TTL ago
        waiting = asyncio.ensure_future(auth.key_authenticate(bearer(tenant)))
        await asyncio.sleep(0.05)
        release.set()
        with pytest.raises(ProxyError) as caught:
            await waiting
        assert caught.value.status == 401

    run(main())
    assert len(calls) == 3


def test_a_database_that_does_not_answer_is_a_503_not_a_crash(
    tenant: Tenant, clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(raw: str) -> ResolvedKey | None:
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(auth, "_resolve", down)
    with pytest.raises(ProxyError) as caught:
        run(auth.key_authenticate(bearer(tenant)))
    assert caught.value.status == 503
    assert caught.value.code == "key_store_unavailable"
    assert not auth._cache


def test_without_a_cache_every_request_resolves_the_key(
    tenant: Tenant, clock: list[float], resolutions: list[str], settings: Any
) -> None:
    settings.PROXY_KEY_CACHE_SECONDS = 0
    for _ in range(3):
        run(auth.key_authenticate(bearer(tenant)))
    api_key_revoke(api_key=tenant.api_key, actor=None)
    with pytest.raises(ProxyError):
        run(auth.key_authenticate(bearer(tenant)))
    assert len(resolutions) == 4
    assert not auth._cache


def test_a_worker_records_a_key_as_used_once_a_minute_not_on_every_refresh(
    tenant: Tenant, clock: list[float], resolutions: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    marks: list[int] = []
    real = auth.api_key_mark_used

    def counted(*, api_key_id: int) -> None:
        marks.append(api_key_id)
        real(api_key_id=api_key_id)

    monkeypatch.setattr(auth, "api_key_mark_used", counted)
    for _ in range(3):
        run(auth.key_authenticate(bearer(tenant)))
        clock[0] += TTL + 0.01  # each lookup resolves again
    assert len(resolutions) == 3
    assert marks == [tenant.api_key.id]
    tenant.api_key.refresh_from_db()
    assert tenant.api_key.last_used_at is not None
    clock[0] += 60
    run(auth.key_authenticate(bearer(tenant)))
    assert marks == [tenant.api_key.id] * 2


@pytest.mark.skipif(
    not keydb.on_postgresql(), reason="the loop's own connection exists on PostgreSQL only"
)
def test_on_postgresql_a_dropped_key_connection_is_replaced_without_an_error(
    tenant: Tenant, clock: list[float]
) -> None:
    async def main() -> ResolvedKey:
        await auth.key_authenticate(bearer(tenant))
        conn = await keydb._connection("default")
        # The database ends the connection (a restart, an idle timeout on the way).
        await asyncio.to_thread(_terminate_backend, conn.info.backend_pid)
        clock[0] += TTL + 0.01
        return await auth.key_authenticate(bearer(tenant))

    assert run(main()).api_key_id == tenant.api_key.id


def _terminate_backend(pid: int) -> None:
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        connection.close()  # this thread's connection goes back before the database is dropped


@pytest.mark.skipif(
    not keydb.on_postgresql(), reason="the loop's own connection exists on PostgreSQL only"
)
def test_on_postgresql_a_query_that_hangs_is_a_503_and_the_next_lookup_gets_a_new_connection(
    tenant: Tenant, clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keydb, "QUERY_TIMEOUT_SECONDS", 0.2)
    real = keydb._read
    hang = [True]

    async def read(conn: Any, sql: str, params: list[str]) -> Any:
        if hang[0]:
            hang[0] = False
            async with conn.cursor() as cursor:
                await cursor.execute("SELECT pg_sleep(2)")  # a reply that does not come
        return await real(conn, sql, params)

    monkeypatch.setattr(keydb, "_read", read)

    async def main() -> tuple[int, int]:
        first = (await keydb._connection("default")).info.backend_pid
        with pytest.raises(ProxyError) as caught:
            await auth.key_authenticate(bearer(tenant))
        assert caught.value.status == 503
        clock[0] += 0.01
        assert (await auth.key_authenticate(bearer(tenant))).api_key_id == tenant.api_key.id
        return first, (await keydb._connection("default")).info.backend_pid

    first, second = run(main())
    assert first != second
