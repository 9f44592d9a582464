"""Shared fixtures: people (owner, teammate, outsider) and the fake OpenAI server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.test import Client

from accounts.models import Account, Membership, User
from accounts.services import user_get_or_create

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None) -> Iterator[None]:
    """pytest-django's test database, with no session left on it when it is dropped.

    Django closes its connection pool before the drop, but a connection still checked out
    (by a thread other than this one, such as sync_to_async's executor) can stay open,
    and PostgreSQL refuses to drop a database in use: one session was left in most runs.
    By now every server a test started has stopped, so what is left belongs to this
    process and is ended here."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    import psycopg

    s = connection.settings_dict
    with psycopg.connect(
        host=s.get("HOST") or "127.0.0.1",
        port=s.get("PORT") or 5432,
        user=s.get("USER") or "postgres",
        password=s.get("PASSWORD") or None,
        dbname="postgres",
        autocommit=True,
    ) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [s["NAME"]],
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up: {last}")


@dataclass
class FakeOpenAI:
    base_url: str  # ends in /v1
    process: subprocess.Popen[bytes]

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(self.base_url.removesuffix("/v1") + "/_fake/stats").json())

    def connections(self) -> int:
        """Distinct connections the requests since the last reset came on."""
        url = self.base_url.removesuffix("/v1") + "/_fake/connections"
        return int(httpx.get(url).json()["connections"])

    def reset(self) -> None:
        httpx.post(self.base_url.removesuffix("/v1") + "/_fake/reset")


@pytest.fixture(scope="session")
def fake_openai_server() -> Iterator[FakeOpenAI]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_server", "--port", str(port)], cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/_fake/stats")
        yield FakeOpenAI(base_url=base + "/v1", process=proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def fake_openai(fake_openai_server: FakeOpenAI, settings) -> FakeOpenAI:  # type: ignore[no-untyped-def]
    """The fake server, with OPENAI_UPSTREAM_BASE_URL pointed at it and counters reset."""
    settings.OPENAI_UPSTREAM_BASE_URL = fake_openai_server.base_url
    fake_openai_server.reset()
    return fake_openai_server


@dataclass
class Person:
    user: User
    account: Account
    client: Client


def _person(email: str) -> Person:
    user, _ = user_get_or_create(email=email)
    account = Membership.objects.get(user=user, role=Membership.Role.OWNER).account
    client = Client()
    client.force_login(user, backend="allauth.account.auth_backends.AuthenticationBackend")
    return Person(user=user, account=account, client=client)


@pytest.fixture
def owner(db) -> Person:  # type: ignore[no-untyped-def]
    return _person("owner@example.com")


@pytest.fixture
def teammate(db, owner: Person) -> Person:  # type: ignore[no-untyped-def]
    """A member of the owner's account (and owner of their own personal one)."""
    person = _person("teammate@example.com")
    Membership.objects.create(account=owner.account, user=person.user, role=Membership.Role.MEMBER)
    return person


@pytest.fixture
def outsider(db) -> Person:  # type: ignore[no-untyped-def]
    return _person("outsider@example.com")


@pytest.fixture(autouse=True)
def _test_env(settings) -> None:  # type: ignore[no-untyped-def]
    settings.CELERY_TASK_ALWAYS_EAGER = True
