"""The proxy recovers once the database is back after it dropped the proxy's connections."""

from __future__ import annotations

import time

import httpx
import psycopg
import pytest
from django.db import connection

from tests.proxy.conftest import ProxyServer, Tenant

pytestmark = pytest.mark.django_db(transaction=True)


def _drop_other_connections() -> None:
    s = connection.settings_dict
    mine = connection.cursor().connection.info.backend_pid
    with psycopg.connect(
        host=s.get("HOST") or "127.0.0.1",
        port=s.get("PORT") or 5432,
        user=s.get("USER") or "postgres",
        dbname="postgres",
        autocommit=True,
    ) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> %s AND pid <> pg_backend_pid()",
            [s["NAME"], mine],
        )
    # This process's idle pooled connections went too: drop them before later tests.
    pool = getattr(connection, "pool", None)
    if pool is not None:
        pool.check()


def test_admission_recovers_after_the_database_dropped_its_connection(
    proxy: ProxyServer, tenant: Tenant
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    tenant.cap("5.00")
    client = proxy.client(tenant.raw, max_retries=0)
    no_cache = {"X-BudgetLLM-Cache": "off"}
    msgs = [{"role": "user", "content": "hi"}]
    client.chat.completions.create(model="gpt-4o-mini", messages=msgs, extra_headers=no_cache)
    _drop_other_connections()  # a database restart, as the proxy sees it
    time.sleep(0.5)
    statuses = []
    for _ in range(9):
        r = httpx.post(
            proxy.base_url + "/chat/completions",
            headers={"Authorization": f"Bearer {tenant.raw}", **no_cache},
            json={"model": "gpt-4o-mini", "messages": msgs},
            timeout=10,
        )
        statuses.append((r.status_code, r.json().get("error", {}).get("code")))
        time.sleep(0.3)
    # Refused (503, never waved through) while steps meet dead connections (at most one
    # per pooled connection: DATABASE_POOL_MAX_SIZE is 4 here); then served again,
    # instead of every request being refused until the worker restarts.
    first_ok = next(i for i, s in enumerate(statuses) if s[0] == 200)
    assert first_ok <= 4, statuses
    assert set(statuses[:first_ok]) <= {(503, "ledger_unavailable")}, statuses
    assert all(s[0] == 200 for s in statuses[first_ok:]), statuses
