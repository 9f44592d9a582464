"""Closing the proxy's per-loop clients when a worker shuts down."""

from __future__ import annotations

from . import keydb
from .cache import cache_store
from .upstream import upstream_close


async def proxy_shutdown() -> None:
    await upstream_close()
    await cache_store().close()
    await keydb.aclose()
