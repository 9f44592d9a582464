from __future__ import annotations

import pytest
from django.test import Client


@pytest.mark.django_db
def test_healthz_answers_ok_without_touching_anything(client: Client) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_database_cache_and_broker_up(client: Client) -> None:
    resp = client.get("/readyz")
    assert resp.status_code == 200, resp.content
    assert resp.json()["status"] == "ok"


@pytest.mark.django_db
def test_readyz_names_what_is_down(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        }
    }
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert "cache" in resp.json()["down"]
    assert "database" not in resp.json()["down"]


@pytest.mark.django_db
def test_landing_page_renders(client: Client) -> None:
    resp = client.get("/")
    assert resp.status_code == 200
    assert b"Hard budget limits for LLM APIs" in resp.content
