"""Resolving `bllm_` keys on the event loop when the database is PostgreSQL.

Through Django a resolution is a hop to a worker thread, a checkout from the connection
pool and the return to it: a few milliseconds during which that thread and the event
loop take turns holding the GIL, so every request the worker has in flight waits with
it, and the key cache refreshes keys in use all the time. Here the one resolve query
runs on the loop over a connection of its own (autocommit, one per event loop), and the
loop goes on serving requests while it waits for the reply. Other databases (SQLite,
the embedded default) resolve through Django in a thread.

A query that gets no answer within QUERY_TIMEOUT_SECONDS fails (the caller answers 503)
and later lookups get a new connection: lookups take turns on one connection, and one
that hung (a half-open connection after a network fault) must not hold up the others.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from typing import Any

import psycopg
from asgiref.sync import sync_to_async
from django.db import connections

from keys.services import ResolvedKey, api_key_from_row, api_key_resolve_query

CONNECT_TIMEOUT_SECONDS = 3
QUERY_TIMEOUT_SECONDS = 3

_connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, psycopg.AsyncConnection[Any]]
_connections = weakref.WeakKeyDictionary()
_connecting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]]
_connecting = weakref.WeakKeyDictionary()
_compiled = False


def on_postgresql() -> bool:
    return connections["default"].vendor == "postgresql"


async def resolve(raw: str) -> ResolvedKey | None:
    """`keys.services.api_key_resolve` without leaving the loop. Raises psycopg.Error or
    TimeoutError when the database cannot answer."""
    query = await _query(raw)
    if query is None:
        return None
    alias, sql, params = query
    reused = _open_connection() is not None
    try:
        row = await _fetch(alias, sql, params)
    except psycopg.OperationalError:
        if not reused:
            raise  # a new connection failed: the database is down, not the connection
        # The kept connection went away (database restarted, idle connection dropped):
        # the query only reads, so it is sent once more on a new connection.
        row = await _fetch(alias, sql, params)
    return api_key_from_row(raw=raw, row=row)


async def _query(raw: str) -> tuple[str, str, list[str]] | None:
    global _compiled
    if _compiled:
        return api_key_resolve_query(raw=raw)
    # Django compiles the SQL once, in a thread (compiling may ask the database for its
    # version); after that only the key's prefix changes. A malformed key compiles nothing.
    query = await sync_to_async(api_key_resolve_query, thread_sensitive=False)(raw=raw)
    _compiled = query is not None
    return query


async def _fetch(alias: str, sql: str, params: list[str]) -> tuple[Any, ...] | None:
    conn = await _connection(alias)
    query = asyncio.ensure_future(_read(conn, sql, params))
    query.add_done_callback(functools.partial(_query_done, conn))
    try:
        # Shielded: a lookup whose request goes away lets its query finish (one stopped
        # half-way would leave the shared connection in the middle of a reply).
        return await asyncio.wait_for(asyncio.shield(query), QUERY_TIMEOUT_SECONDS)
    except TimeoutError:
        _forget(conn)  # lookups from now on get a new connection
        query.cancel()  # psycopg asks the server to stop it; the connection is then closed
        raise
    except psycopg.OperationalError:
        _forget(conn)
        raise


async def _read(conn: psycopg.AsyncConnection[Any], sql: str, params: list[str]) -> Any:
    async with conn.cursor() as cursor:
        await cursor.execute(sql, params)
        return await cursor.fetchone()


def _query_done(conn: psycopg.AsyncConnection[Any], query: asyncio.Future[Any]) -> None:
    if not query.cancelled():
        query.exception()  # retrieved: whoever waited has reported it
    if _connections.get(query.get_loop()) is not conn and not conn.closed:
        conn.pgconn.finish()  # a forgotten connection closes once its last query is done


def _open_connection() -> psycopg.AsyncConnection[Any] | None:
    conn = _connections.get(asyncio.get_running_loop())
    return None if conn is None or conn.closed else conn


def _forget(conn: psycopg.AsyncConnection[Any]) -> None:
    loop = asyncio.get_running_loop()
    if _connections.get(loop) is conn:
        del _connections[loop]


async def _connection(alias: str) -> psycopg.AsyncConnection[Any]:
    conn = _open_connection()
    if conn is not None:
        return conn
    loop = asyncio.get_running_loop()
    connecting = _connecting.get(loop)
    if connecting is None:  # one connection at a time, however many lookups wait for it
        connecting = _connecting[loop] = loop.create_task(_connect(alias, loop))
        connecting.add_done_callback(lambda _: _connecting.pop(loop, None))
    # Shielded, and stored by the connecting task itself: lookups that give up waiting
    # neither stop the connection nor lose it.
    await asyncio.shield(connecting)
    conn = _open_connection()
    if conn is None:
        raise psycopg.OperationalError("the key database connection closed as it opened")
    return conn


async def _connect(alias: str, loop: asyncio.AbstractEventLoop) -> None:
    params = dict(connections[alias].get_connection_params())
    params.pop("cursor_factory", None)  # Django's is for its own, synchronous cursors
    params.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    # An idle connection whose peer vanished is noticed within a minute, not after the
    # kernel's quarter of an hour of retransmissions.
    params.setdefault("keepalives", 1)
    params.setdefault("keepalives_idle", 30)
    params.setdefault("keepalives_interval", 10)
    params.setdefault("keepalives_count", 3)
    params["application_name"] = "budgetllm-proxy-keys"
    _connections[loop] = await psycopg.AsyncConnection.connect(**params, autocommit=True)


async def aclose() -> None:
    """Close the running loop's connection (a worker shutting down)."""
    conn = _connections.pop(asyncio.get_running_loop(), None)
    if conn is not None:
        await conn.close()


def close_now() -> None:
    """Close every loop's connection at once, also those of loops that have ended (tests)."""
    for conn in list(_connections.values()):
        conn.pgconn.finish()
    _connections.clear()
