"""Shared set-up for the benchmarks: production-like settings, servers, a tenant, /proc.

Settings are what a production deploy uses: DEBUG=false with freshly generated secrets,
uvicorn workers (uvloop + httptools), the Redis ledger when REDIS_URL is set. Point
DATABASE_URL / REDIS_URL at scratch stores: each run adds an account to the database.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
FAKE_CONTROL_HEADERS = "x-fake-delay-ms,x-fake-stream-delay-only,x-fake-status"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def production_env(*, upstream: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "VAULT_KEYS": Fernet.generate_key().decode(),
            "KEY_HASH_SECRET": secrets.token_urlsafe(32),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            # Plain HTTP on loopback (a reverse proxy terminates TLS in production).
            "SECURE_SSL_REDIRECT": "false",
            "OPENAI_UPSTREAM_BASE_URL": upstream,
            "PROXY_FORWARD_HEADERS": FAKE_CONTROL_HEADERS,
            "LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "budgetllm_site.settings",
        }
    )
    env.update(extra)
    return env


def wait_for(url: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def wait_for_port(port: int, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def start_fake() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    LOG.parent.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_server", "--port", str(port)],
        cwd=ROOT,
        stdout=LOG.open("ab"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(base + "/_fake/stats")
    return proc, base + "/v1"


LOG = ROOT / "var" / "bench-servers.log"


def start_proxy(env: dict[str, str], *, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """uvicorn with the production settings; its output goes to var/bench-servers.log so
    the figures printed by the benchmark stay readable."""
    port = free_port()
    LOG.parent.mkdir(exist_ok=True)
    log = LOG.open("ab")
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
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(base + "/healthz")
    return proc, base + "/v1"


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def django_setup(env: dict[str, str]) -> None:
    """Configure Django in this process with the servers' settings (same DB and secrets)."""
    for key in (
        "DEBUG",
        "SECRET_KEY",
        "VAULT_KEYS",
        "KEY_HASH_SECRET",
        "ALLOWED_HOSTS",
        "SECURE_SSL_REDIRECT",
        "DATABASE_URL",
        "REDIS_URL",
        "LEDGER_BACKEND",
        "DJANGO_SETTINGS_MODULE",
        "OPENAI_UPSTREAM_BASE_URL",
    ):
        if key in env:
            os.environ[key] = env[key]
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_tenant(
    *, email: str, caps_usd: dict[tuple[str, str], str], custom_price: dict[str, Any] | None = None
) -> tuple[str, Any]:
    """An account with a provider key, a bllm_ key and caps: (raw bllm_ key, account)."""
    from decimal import Decimal

    from accounts.models import Membership
    from accounts.services import user_get_or_create
    from budgets.models import MICROS_PER_USD, Cap, ModelPrice
    from keys.services import api_key_create, provider_key_add

    user, _ = user_get_or_create(email=email)
    account = Membership.objects.get(user=user, role=Membership.Role.OWNER).account
    provider_key = provider_key_add(
        account=account, actor=user, raw_key="sk-bench-" + "x" * 32, validate=False
    )
    api_key, raw = api_key_create(
        account=account, actor=user, provider_key=provider_key, name="bench"
    )
    for (scope, period), usd in caps_usd.items():
        Cap.objects.create(
            account=account,
            scope=scope,
            period=period,
            api_key=api_key if scope in ("key", "run") else None,
            limit_micros=int(Decimal(usd) * MICROS_PER_USD),
        )
    if custom_price:
        ModelPrice.objects.create(account=account, **custom_price)
    return raw, account


def worker_pids(pid: int) -> list[int]:
    """uvicorn's worker processes (the master itself when it runs a single worker)."""
    try:
        kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        kids = []
    # Skip multiprocessing's resource tracker: only spawned workers serve requests.
    workers = [k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]
    return workers or [pid]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
