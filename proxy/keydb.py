"""Resolving `bllm_` keys on the event loop when the database is PostgreSQL.

Through Django a resolution is a hop to a worker thread, a checkout from the connection
pool and the return to it: a few milliseconds during which that thread and the event
loop take turns holding the GIL, so every request the worker has in flight waits with
it. Under load the key cache's refreshes made these stalls the proxy's slowest 1 %.
Here the one resolve query runs on the loop over a connection of its own (autocommit,
one per event loop), and the loop goes on serving requests while it waits for the reply.
Other databases (SQLite, the embedded default) resolve through Django in a thread.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import psycopg
from asgiref.sync import sync_to_async
from django.db import connections

from keys.services import ResolvedKey, api_key_from_row, api_key_resolve_query

CONNECT_TIMEOUT_SECONDS = 5

_connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, psycopg.AsyncConnection[Any]]
_connections = weakref.WeakKeyDictionary()
_connecting: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, asyncio.Task[psycopg.AsyncConnection[Any]]
]
_connecting = weakref.WeakKeyDictionary()
_compiled = False


def on_postgresql() -> bool:
    return connections["default"].vendor == "postgresql"


async def resolve(raw: str) -> ResolvedKey | None:
    """`keys.services.api_key_resolve` without leaving the loop."""
    query = await _query(raw)
    if query is None:
        return None
    alias, sql, params = query
    try:
        row = await _fetch(alias, sql, params)
    except psycopg.OperationalError:
        # The connection went away (database restarted, idle connection dropped): the
        # query only reads, so it is sent once more on a new connection.
        row = await _fetch(alias, sql, params)
    return api_key_from_row(raw=raw, row=row)


async def _query(raw: str) -> tuple[str, str, list[str]] | None:
    global _compiled
    if not _compiled:
        # Django compiles the SQL once, in a thread (compiling may ask the database for
        # its version); after that only the key's prefix changes.
        await sync_to_async(api_key_resolve_query, thread_sensitive=False)(raw=raw)
        _compiled = True
    return api_key_resolve_query(raw=raw)


async def _fetch(alias: str, sql: str, params: list[str]) -> tuple[Any, ...] | None:
    conn = await _connection(alias)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(sql, params)
            return await cursor.fetchone()
    except psycopg.OperationalError:
        await conn.close()
        raise


async def _connection(alias: str) -> psycopg.AsyncConnection[Any]:
    loop = asyncio.get_running_loop()
    conn = _connections.get(loop)
    if conn is not None and not conn.closed:
        return conn
    connecting = _connecting.get(loop)
    if connecting is None:  # one connection at a time, however many requests wait for it
        connecting = _connecting[loop] = loop.create_task(_connect(alias))
        connecting.add_done_callback(lambda _: _connecting.pop(loop, None))
    conn = _connections[loop] = await asyncio.shield(connecting)
    return conn


async def _connect(alias: str) -> psycopg.AsyncConnection[Any]:
    params = dict(connections[alias].get_connection_params())
    params.pop("cursor_factory", None)  # Django's is for its own, synchronous cursors
    params.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    params["application_name"] = "budgetllm-proxy-keys"
    return await psycopg.AsyncConnection.connect(**params, autocommit=True)


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
