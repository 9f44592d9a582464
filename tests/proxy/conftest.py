"""Fixtures for the proxy: a real uvicorn process serving our ASGI app on the test database.

pytest-django's live_server is WSGI and would buffer streams, so the proxy runs as a
uvicorn subprocess pointed at the test database (a file for SQLite, see settings) and at
the same Redis, with the fake OpenAI server as its upstream. Tests use
`transaction=True` so what they write is committed and visible to that process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx2
import openai
import pytest
from django.conf import settings
from django.db import connection

from accounts.models import Account
from budgets.models import MICROS_PER_USD, Cap
from keys import vault
from keys.models import ApiKey, ProviderKey
from keys.services import api_key_create, provider_key_hint
from tests.conftest import ROOT, FakeOpenAI, Person, free_port, wait_for_http

OPENAI_KEY = "sk-proj-proxytestKEY0123456789abcdefXYZ"


def test_database_url() -> str:
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or "postgres"
    host = s.get("HOST") or "127.0.0.1"
    port = s.get("PORT") or 5432
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{s['NAME']}"


def server_env(upstream: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_"))}
    env.update(
        {
            "DATABASE_URL": test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "OPENAI_UPSTREAM_BASE_URL": upstream,
            "SECRET_KEY": settings.SECRET_KEY,
            "VAULT_KEYS": ",".join(settings.VAULT_KEYS),
            "KEY_HASH_SECRET": settings.KEY_HASH_SECRET,
            "BUDGETLLM_TESTING": "1",
            # Revocation, pauses and caps written by a test apply to its very next request.
            "PROXY_KEY_CACHE_SECONDS": "0",
            "LEDGER_CONFIG_CACHE_SECONDS": "0",
            "LOG_LEVEL": "WARNING",
            "DATABASE_POOL_MAX_SIZE": "4",
            # The fake server's control headers (see tests/fakes/openai_server.py).
            "PROXY_FORWARD_HEADERS": "x-fake-status,x-fake-delay-ms,x-fake-no-usage,"
            "x-fake-drop-after,x-fake-stream-delay-only,x-fake-word-bytes,x-fake-script,"
            "x-fake-script-end,x-fake-words,x-fake-obfuscation-bytes",
            "PROXY_MAX_BODY_BYTES": str(256 * 1024),
            "PROXY_MAX_EMBEDDINGS_BODY_BYTES": str(128 * 1024),
        }
    )
    env.update(extra)
    return env


@dataclass
class ProxyServer:
    base_url: str  # ends in /v1
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    def client(self, api_key: str, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, **kwargs)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def start_proxy(env: dict[str, str], *, workers: int = 1) -> ProxyServer:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "budgetllm_site.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    server = ProxyServer(base_url=f"http://127.0.0.1:{port}/v1", process=proc, env=env)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=40)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running_proxy(env: dict[str, str], *, workers: int = 1) -> Iterator[ProxyServer]:
    """A proxy for the length of a fixture, stopped after it: before pytest-django drops
    the test database (the server holds connections to it)."""
    server = start_proxy(env, workers=workers)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def proxy_server(django_db_setup: None, fake_openai_server: FakeOpenAI) -> Iterator[ProxyServer]:
    with running_proxy(server_env(fake_openai_server.base_url)) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean_redis() -> None:
    """Each test starts with an empty ledger and cache (account ids repeat on SQLite).

    This FLUSHes the Redis database REDIS_URL names: give tests a database of their own,
    never one a running server (or a benchmark) uses."""
    if settings.REDIS_URL:
        import redis

        redis.Redis.from_url(settings.REDIS_URL).flushdb()
    from budgets.ledger import reset_ledger

    reset_ledger()


@pytest.fixture
def proxy(proxy_server: ProxyServer, fake_openai: FakeOpenAI) -> ProxyServer:
    """The proxy, with the fake upstream's counters reset."""
    return proxy_server


@dataclass
class Tenant:
    person: Person
    account: Account
    provider_key: ProviderKey
    api_key: ApiKey
    raw: str  # the bllm_ key

    def cap(
        self,
        usd: str,
        *,
        scope: str = Cap.Scope.ACCOUNT,
        period: str = Cap.Period.DAY,
        key: bool = False,
        model: str = "",
    ) -> Cap:
        return Cap.objects.create(
            account=self.account,
            scope=scope,
            period=period,
            api_key=self.api_key if key or scope in (Cap.Scope.KEY, Cap.Scope.RUN) else None,
            model=model,
            limit_micros=int(Decimal(usd) * MICROS_PER_USD),
        )


def make_tenant(person: Person, name: str = "test") -> Tenant:
    provider_key = ProviderKey.objects.create(
        account=person.account,
        ciphertext=vault.encrypt(OPENAI_KEY),
        hint=provider_key_hint(OPENAI_KEY),
    )
    api_key, raw = api_key_create(
        account=person.account, actor=person.user, provider_key=provider_key, name=name
    )
    return Tenant(person, person.account, provider_key, api_key, raw)


@pytest.fixture
def tenant(owner: Person) -> Tenant:
    return make_tenant(owner)


@dataclass
class Counted:
    """An SDK client that counts the HTTP requests it sends (retries included)."""

    client: openai.OpenAI
    sent: list[str]


@pytest.fixture
def counted_client(proxy: ProxyServer) -> Callable[..., Counted]:
    def make(api_key: str, **kwargs: Any) -> Counted:
        sent: list[str] = []

        def hook(request: Any) -> None:
            sent.append(str(request.url))

        http_client = httpx2.Client(event_hooks={"request": [hook]})
        return Counted(proxy.client(api_key, http_client=http_client, **kwargs), sent)

    return make
