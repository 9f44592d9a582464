"""Secrets never leave in plain text: not in pages, logs, error reports or table rows.

The one exception is the single response that reveals a newly created bllm_ key."""

from __future__ import annotations

import logging
import sys

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.views.debug import ExceptionReporter

from keys.models import ApiKey, ProviderKey
from keys.services import ProviderUnreachable, provider_key_add
from tests.conftest import FakeOpenAI, Person, free_port

from .conftest import OPENAI_KEY

HTMX = {"HX-Request": "true"}
REJECTED_KEY = "sk-proj-invalidLEAKCHECKzz11yy22xx33ww44"


def _all_rows_text() -> str:
    """Every value of every table, as text: what a database dump would show."""
    parts: list[str] = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            for row in cursor.fetchall():
                parts.extend(
                    v.decode(errors="replace") if isinstance(v, bytes | memoryview) else str(v)
                    for v in row
                )
    return "\n".join(parts)


def _secret_parts(raw_bllm: str, prefix: str) -> list[str]:
    # The whole key, and its secret part alone (the prefix is public on purpose).
    return [raw_bllm, raw_bllm[len("bllm_" + prefix) :]]


@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def test_keys_appear_nowhere_but_the_one_time_reveal(
    owner: Person,
    fake_openai: FakeOpenAI,
    vault_keys: list[str],
    everything_logged: pytest.LogCaptureFixture,
) -> None:
    client = owner.client
    pages: list[str] = []
    # Record every SQL statement too (with the debug cursor, Django logs each one).
    with CaptureQueriesContext(connection) as queries:
        # A rejected key, then the real one, by plain form post and by HTMX.
        pages.append(
            client.post(reverse("keys:provider_add"), {"key": REJECTED_KEY}).content.decode()
        )
        pages.append(
            client.post(
                reverse("keys:provider_add"), {"key": REJECTED_KEY}, headers=HTMX
            ).content.decode()
        )
        pages.append(
            client.post(
                reverse("keys:provider_add"), {"key": OPENAI_KEY}, follow=True
            ).content.decode()
        )
        provider_key = ProviderKey.objects.get(account=owner.account)
        created = client.post(
            reverse("keys:api_create"),
            {"name": "prod", "provider_key": str(provider_key.public_id)},
            headers=HTMX,
        )
        raw = created.context["new_key_raw"]
        row = ApiKey.objects.get(account=owner.account)
        assert raw in created.content.decode()  # the one reveal
        pages.append(client.get(reverse("keys:index")).content.decode())
        pages.append(
            client.get(
                reverse("keys:provider_delete", args=[provider_key.public_id])
            ).content.decode()
        )
        pages.append(
            client.post(
                reverse("keys:api_pause", args=[row.public_id]), follow=True
            ).content.decode()
        )
        pages.append(
            client.post(
                reverse("keys:api_revoke", args=[row.public_id]), follow=True
            ).content.decode()
        )

    secrets = [OPENAI_KEY, REJECTED_KEY, *_secret_parts(raw, row.prefix)]
    logs = "\n".join(
        [r.getMessage() for r in everything_logged.records]
        + [str(getattr(r, "params", "")) for r in everything_logged.records]
    )
    sql = "\n".join(q["sql"] for q in queries.captured_queries)
    rows = _all_rows_text()
    assert len(queries.captured_queries) > 10  # the capture really saw the traffic
    for secret in secrets:
        for page in pages:
            assert secret not in page
        assert secret not in logs
        assert secret not in sql
        assert secret not in rows
    # What the person does see: the hint and the public prefix.
    assert f"sk-…{OPENAI_KEY[-4:]}" in pages[-1]
    assert f"bllm_{row.prefix}…" in pages[-1]


def test_error_reports_hide_the_pasted_key(
    owner: Person,
    vault_keys: list[str],
    settings,  # type: ignore[no-untyped-def]
) -> None:
    """What a 500 page (DEBUG) or an admin error mail would show: the POST data is
    filtered and the service's local variables are hidden."""
    settings.OPENAI_UPSTREAM_BASE_URL = f"http://127.0.0.1:{free_port()}/v1"
    response = owner.client.post(reverse("keys:provider_add"), {"key": OPENAI_KEY})
    request = response.wsgi_request
    assert request.POST["key"] == OPENAI_KEY  # it was there to leak

    try:
        provider_key_add(account=owner.account, actor=owner.user, raw_key=OPENAI_KEY)
    except ProviderUnreachable:
        exc_type, exc_value, tb = sys.exc_info()
    reporter = ExceptionReporter(request, exc_type, exc_value, tb)
    assert OPENAI_KEY not in reporter.get_traceback_html()
    assert OPENAI_KEY not in reporter.get_traceback_text()
    assert exc_value is not None and exc_value.__cause__ is None
    assert exc_value.__suppress_context__  # no chained urllib frames holding the headers
