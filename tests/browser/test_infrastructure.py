"""The browser harness itself: the live product answers and Chromium renders it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import ARTIFACTS, LiveProduct, shot

pytestmark = pytest.mark.browser


def test_live_product_serves_the_landing_page_to_chromium(product: LiveProduct, page: Any) -> None:
    page.goto(product.url("/"))
    assert "Hard budget limits for LLM APIs" in page.content()
    path = shot(page, "landing")
    assert path.parent == ARTIFACTS / "test_live_product_serves_the_landing_page_to_chromium"
    assert path.name == "01-landing.png" and path.stat().st_size > 0
