"""Browser-test infrastructure: the real product in a uvicorn process, driven by Chromium.

Reuse it from any app's browser tests (mark them `@pytest.mark.browser`):

    def test_something(product: LiveProduct, page: Page) -> None:
        page.goto(product.url("/"))
        shot(page, "landing")
        link = product.wait_for_link(to="ravi@example.com")

- `product` (session scope) starts `uvicorn budgetllm_site.asgi:application` on a free
  loopback port against its OWN freshly migrated database (a temp SQLite file, or a
  throwaway PostgreSQL database created next to DATABASE_URL's and dropped afterwards),
  with mail written to a folder (one file per message), OPENAI_UPSTREAM_BASE_URL at the
  fake OpenAI server and Celery eager. The test process never shares a database with it:
  assert through the browser, the HTTP API or `product.mails()`.
- `page` is a fresh browser context per test; `shot(page, "step")` saves
  `test-artifacts/<test name>/NN-step.png`, numbered in order.
- Chromium is Debian's /usr/bin/chromium (`apt-get install -y chromium`); never
  `playwright install`. Without it the tests skip, unless BUDGETLLM_REQUIRE_BROWSER=1
  (CI), where a missing browser is a failure.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.conftest import ROOT, FakeOpenAI, free_port, wait_for_http

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"

# Payments run on the development stand-in checkout with these test credentials, so
# browser tests sign webhooks exactly as Razorpay and LemonSqueezy would.
BILLING_ENV = {
    "BILLING_CHECKOUT_STANDIN": "true",
    "RAZORPAY_KEY_ID": "rzp_test_browser",
    "RAZORPAY_KEY_SECRET": "rzp_browser_key_secret",
    "RAZORPAY_WEBHOOK_SECRET": "rzp_browser_webhook_secret",
    "RAZORPAY_PLAN_PRO": "plan_BrowserPro0001",
    "RAZORPAY_PLAN_TEAM": "plan_BrowserTeam001",
    "LEMONSQUEEZY_STORE_URL": "",
    "LEMONSQUEEZY_VARIANT_PRO": "501",
    "LEMONSQUEEZY_VARIANT_TEAM": "502",
    "LEMONSQUEEZY_WEBHOOK_SECRET": "ls_browser_webhook_secret",
}

# Playwright's sync API runs an event loop in the test thread; Django refuses ORM calls
# next to a running loop unless told otherwise. Test processes only, never the product.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def _browser_required() -> bool:
    return os.environ.get("BUDGETLLM_REQUIRE_BROWSER", "") in {"1", "true", "yes"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip browser tests when Chromium is missing, except where CI demands them."""
    if Path(CHROMIUM).exists() or _browser_required():
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} missing: apt-get install -y chromium")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


# --- The product under test ----------------------------------------------------------------


@dataclass
class LiveProduct:
    base_url: str
    mail_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    fake_openai: FakeOpenAI
    _seen_mail: set[str] = field(default_factory=set)

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def api_base_url(self) -> str:
        """What users put in the OpenAI SDK's base_url."""
        return self.base_url + "/v1"

    def mails(self, *, to: str | None = None) -> list[EmailMessage]:
        """Every message sent so far (oldest first), optionally only those to `to`."""
        found: list[EmailMessage] = []
        for path in sorted(self.mail_dir.glob("*.log"), key=lambda p: p.stat().st_mtime_ns):
            # The file backend appends a line of dashes after each message.
            for chunk in re.split(rb"\n-{79}\n", path.read_bytes()):
                if not chunk.strip():
                    continue
                msg = email.message_from_bytes(chunk, policy=email.policy.default)
                assert isinstance(msg, EmailMessage)
                if to is None or to.lower() in str(msg.get("To", "")).lower():
                    found.append(msg)
        return found

    def wait_for_mail(self, *, to: str, timeout: float = 15.0) -> EmailMessage:
        """The newest message to `to`, waiting (bounded) for it to arrive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = self.mails(to=to)
            if messages:
                return messages[-1]
            time.sleep(0.1)
        raise AssertionError(f"no mail to {to} within {timeout}s (server log: {self.log_path})")

    def wait_for_link(self, *, to: str, timeout: float = 15.0) -> str:
        """The first link to this site in the newest message to `to` (the magic link)."""
        msg = self.wait_for_mail(to=to, timeout=timeout)
        body = mail_text(msg)
        match = re.search(re.escape(self.base_url) + r"[^\s\"'<>]+", body)
        assert match, f"no link to {self.base_url} in mail:\n{body}"
        return match.group(0).replace("&amp;", "&")

    def server_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def mail_text(msg: EmailMessage) -> str:
    """Plain-text body of a message (falls back to HTML)."""
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return str(msg.get_payload())
    return str(part.get_content())  # type: ignore[attr-defined]


def _database_for_product(tmp: Path) -> tuple[str, str | None]:
    """(DATABASE_URL for the product, Postgres database name to drop afterwards or None)."""
    base = os.environ.get("DATABASE_URL", "")
    if base.startswith(("postgres://", "postgresql://")):
        import psycopg

        parts = urlsplit(base)
        name = f"{parts.path.lstrip('/') or 'budgetllm'}_browser_{uuid.uuid4().hex[:8]}"
        admin_url = urlunsplit(parts._replace(path="/postgres"))
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return urlunsplit(parts._replace(path="/" + name)), name
    return f"sqlite:///{tmp / 'product.sqlite3'}", None


def _drop_database(name: str) -> None:
    import psycopg

    parts = urlsplit(os.environ["DATABASE_URL"])
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _flush_redis(url: str) -> None:
    """The product's fresh database reuses account and key ids from 1: stale ledger
    counters from an earlier run under the same ids would look like spend."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.fixture(scope="session")
def product(fake_openai_server: FakeOpenAI) -> Iterator[LiveProduct]:
    tmp = Path(tempfile.mkdtemp(prefix="bllm-browser-"))
    mail_dir = tmp / "mail"
    mail_dir.mkdir()
    database_url, pg_name = _database_for_product(tmp)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        k: v
        for k, v in os.environ.items()
        # The product is a real run, not a test process.
        if k not in {"DJANGO_ALLOW_ASYNC_UNSAFE", "BUDGETLLM_TESTING", "PYTEST_CURRENT_TEST"}
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "budgetllm_site.settings",
            "DEBUG": "true",
            "DATA_DIR": str(tmp / "data"),
            "DATABASE_URL": database_url,
            "SITE_URL": base_url,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(mail_dir),
            "OPENAI_UPSTREAM_BASE_URL": fake_openai_server.base_url,
            "CELERY_TASK_ALWAYS_EAGER": "true",
            "LOG_LEVEL": "WARNING",
            **BILLING_ENV,
        }
    )
    redis_url = env.get("REDIS_URL", "")
    if redis_url:
        _flush_redis(redis_url)
    python = sys.executable
    for command in (["migrate", "--noinput"], ["createcachetable"]):
        done = subprocess.run(
            [python, "manage.py", *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=300,
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(command)} failed:\n{done.stderr.decode()}")
    log_path = tmp / "server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            python,
            "-m",
            "uvicorn",
            "budgetllm_site.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    # The real product also runs a Celery worker with embedded beat (as bin/run-all does):
    # the Redis ledger writes usage rows from a periodic drain, and rollups are periodic.
    worker_log = (tmp / "worker.log").open("wb")
    worker = subprocess.Popen(
        [
            python,
            "-m",
            "celery",
            "-A",
            "budgetllm_site",
            "worker",
            "-B",
            "--concurrency=1",
            "--loglevel=WARNING",
            "--schedule",
            str(tmp / "celerybeat-schedule"),
        ],
        cwd=ROOT,
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            wait_for_http(base_url + "/healthz", timeout=60)
        except RuntimeError:
            raise RuntimeError(
                "product did not start:\n" + log_path.read_text(errors="replace")
            ) from None
        yield LiveProduct(
            base_url=base_url,
            mail_dir=mail_dir,
            env=env,
            process=proc,
            log_path=log_path,
            fake_openai=fake_openai_server,
        )
    finally:
        for child in (proc, worker):
            child.terminate()
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)
        log.close()
        worker_log.close()
        if pg_name:
            _drop_database(pg_name)
        shutil.rmtree(tmp, ignore_errors=True)


# --- The browser ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing and BUDGETLLM_REQUIRE_BROWSER=1: apt-get install -y chromium"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


_shots: dict[int, list[Any]] = {}


def shot(page: Any, step: str) -> Path:
    """Save a screenshot of this step: test-artifacts/<test>/NN-<step>.png."""
    folder, counter = _shots[id(page)]
    counter += 1
    _shots[id(page)][1] = counter
    slug = re.sub(r"[^a-z0-9]+", "-", step.lower()).strip("-") or "step"
    path = Path(folder) / f"{counter:02d}-{slug}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh context (no cookies) and page; a failing test leaves a last screenshot."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder = ARTIFACTS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    pg = context.new_page()
    console: list[str] = []
    pg.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    _shots[id(pg)] = [folder, 0]
    try:
        yield pg
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            try:
                shot(pg, "failure")
            except Exception:  # noqa: S110 - best effort; the assertion is what matters
                pass
        if console:
            (folder / "console.log").write_text("\n".join(console))
        _shots.pop(id(pg), None)
        context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each phase's report so `page` can screenshot a failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + report.when, report)


def http(product: LiveProduct) -> httpx.Client:
    """A plain HTTP client against the product (for API calls next to the browser)."""
    return httpx.Client(base_url=product.base_url, timeout=30)
