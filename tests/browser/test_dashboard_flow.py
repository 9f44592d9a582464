"""A new user, end to end in Chromium against the real product (uvicorn + Celery):
landing → magic link → onboarding → caps → requests through the proxy with the official
openai SDK → spend and savings on the dashboard → capped → banner → kill-switch → resume."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import openai
import pytest

from tests.browser.conftest import ARTIFACTS, LiveProduct, shot

pytestmark = pytest.mark.browser

EMAIL = "ravi@example.com"
SETUP_BUDGET_SECONDS = 120


def _client(product: LiveProduct, raw_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=product.api_base_url, api_key=raw_key, max_retries=0, timeout=30)


def _ask(client: openai.OpenAI, text: str) -> Any:
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}], max_tokens=20
    )


def _reload_until(page: Any, selector: str, predicate: Any, timeout: float = 20.0) -> str:
    """Reload until the element's text satisfies `predicate` (usage lands asynchronously)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = page.locator(selector).inner_text()
        if predicate(text):
            return text
        page.wait_for_timeout(500)
        page.reload()
    raise AssertionError(f"{selector} never matched; last text: {text!r}")


def test_new_user_goes_from_landing_to_a_capped_request_and_back(
    product: LiveProduct, page: Any
) -> None:
    started = time.monotonic()
    page.on("dialog", lambda dialog: dialog.accept())  # the kill-switch confirm step

    # Landing → sign up by magic link.
    page.goto(product.url("/"))
    shot(page, "landing")
    page.get_by_test_id("cta").first.click()
    page.locator("input[name=email]").fill(EMAIL)
    page.get_by_role("button", name="Email me a sign-in link").click()
    shot(page, "check-your-mail")
    page.goto(product.wait_for_link(to=EMAIL))
    if page.get_by_role("button", name="Sign in").count():
        page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/welcome/"))
    shot(page, "onboarding")

    # Onboarding: provider key, bllm_ key, monthly cap (invalid, then valid), snippets.
    page.locator("input[name=raw_key]").fill("sk-test-onboarding-1234abcd")
    page.get_by_role("button", name="Connect").click()
    page.get_by_text("Connected: ").wait_for()
    page.get_by_role("button", name="Create key").click()
    raw_key = page.get_by_test_id("raw-key").input_value()
    assert raw_key.startswith("bllm_")
    snippet = page.get_by_test_id("snippet-python").input_value()
    assert raw_key in snippet and f'base_url="{product.api_base_url}"' in snippet
    shot(page, "key-created")
    cap_input = page.locator("#step-cap input[name=limit_usd]")
    assert cap_input.input_value() == "50.00"  # the suggestion
    cap_input.fill("500")
    page.locator("#step-cap button[type=submit]").click()
    page.get_by_test_id("cap-error").wait_for()
    assert "up to $100.00" in page.get_by_test_id("cap-error").inner_text()
    assert page.get_by_test_id("raw-key").input_value() == raw_key  # swapped in place
    shot(page, "cap-invalid")
    page.locator("#step-cap input[name=limit_usd]").fill("20")
    page.locator("#step-cap button[type=submit]").click()
    page.get_by_test_id("cap-step-saved").wait_for()
    assert page.locator("[data-testid=first-request]").get_attribute("data-state") == "waiting"
    shot(page, "waiting-for-first-request")

    # The first request with the official SDK turns the indicator green (HTMX polling).
    client = _client(product, raw_key)
    assert _ask(client, "hello from the browser test").choices[0].message.content
    page.locator("[data-testid=first-request][data-state=received]").wait_for(timeout=20_000)
    shot(page, "first-request-received")

    # A fine-tuned model is refused until it has a price; the Caps page gives it one.
    finetune = "ft:gpt-4o-mini:acme::b1"
    ask_finetune = lambda: client.chat.completions.create(  # noqa: E731
        model=finetune, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    with pytest.raises(openai.BadRequestError) as unpriced:
        ask_finetune()
    assert unpriced.value.code == "model_not_priced"
    page.goto(product.url("/caps/"))

    def save_price(output_usd: str) -> None:
        prices = page.get_by_test_id("price-form")  # swapped in anew after each save
        prices.locator("input[name=model]").fill(finetune)
        prices.locator("input[name=input_usd]").fill("0.3")
        prices.locator("input[name=output_usd]").fill(output_usd)
        prices.get_by_role("button", name="Save price").click()

    save_price("0")  # a free model would pass every cap
    page.get_by_test_id("price-error-output_usd").wait_for()
    save_price("1.2")
    page.get_by_test_id("price-saved").wait_for()
    assert finetune in page.get_by_test_id("prices-table").inner_text()
    shot(page, "custom-price-saved")
    assert ask_finetune().choices[0].message.content

    # Caps page: a per-key daily cap, invalid then valid, validated inline by HTMX.
    page.goto(product.url("/caps/"))
    form = page.get_by_test_id("cap-form")
    form.locator("select[name=scope]").select_option("key")
    form.locator("select[name=period]").select_option("day")
    form.locator("input[name=limit_usd]").fill("-1")
    form.get_by_role("button", name="Save cap").click()
    page.get_by_test_id("error-limit_usd").wait_for()
    shot(page, "key-cap-invalid")
    form = page.get_by_test_id("cap-form")
    form.locator("select[name=scope]").select_option("key")
    form.locator("select[name=period]").select_option("day")
    form.locator("select[name=api_key]").select_option(label="my-app")
    form.locator("input[name=limit_usd]").fill("0.0002")
    form.get_by_role("button", name="Save cap").click()
    page.get_by_test_id("cap-saved").wait_for()
    assert "Daily cap on key “my-app”" in page.get_by_test_id("caps-table").inner_text()
    shot(page, "key-cap-saved")

    # Requests until the cap refuses one: a repeat is a cache hit (saved), then a 402.
    assert _ask(client, "hello from the browser test").choices[0].message.content
    refused: openai.APIStatusError | None = None
    for i in range(200):
        try:
            _ask(client, f"distinct prompt number {i} " + "words " * 40)
        except openai.APIStatusError as exc:
            refused = exc
            break
    assert refused is not None and refused.status_code == 402
    capped_after = time.monotonic() - started
    assert "cap" in str(refused.message).lower()
    (
        ARTIFACTS / "test_new_user_goes_from_landing_to_a_capped_request_and_back" / "timing.txt"
    ).write_text(f"landing to first capped request: {capped_after:.1f} s\n")
    assert capped_after < SETUP_BUDGET_SECONDS, f"landing → capped request took {capped_after:.0f}s"

    # Dashboard: numbers, chart data, and the banner naming the cap.
    page.goto(product.url("/dashboard/"))
    spend = _reload_until(page, "[data-testid=spend-today] .stat-value", lambda t: t != "$0")
    saved = _reload_until(page, "[data-testid=saved-month] .stat-value", lambda t: t != "$0")
    assert spend.startswith("$") and saved.startswith("$")
    chart = json.loads(page.locator("#chart-data").text_content() or "{}")
    assert chart["days"] == 30 and chart["spend"][0]["model"] == "gpt-4o-mini"
    assert chart["spend"][0]["usd"][-1] > 0 and chart["saved"][-1] > 0
    assert page.locator("html").get_attribute("data-charts-drawn") == "30"
    banner = page.locator("[data-banner=capped]")
    assert "Daily cap on key “my-app” reached" in banner.inner_text()
    assert "resets" in banner.inner_text()
    shot(page, "dashboard-capped")

    # The 7-day switch swaps only the chart (HTMX) and pushes a working URL.
    page.get_by_role("link", name="7 days").click()
    page.wait_for_url(re.compile(r"days=7"))
    page.locator("html[data-charts-drawn='7']").wait_for()
    assert json.loads(page.locator("#chart-data").text_content() or "{}")["days"] == 7
    shot(page, "chart-7-days")

    # Kill-switch: pause the key (confirm), see the banner, resume.
    page.get_by_test_id("pause-key").first.click()
    page.locator("[data-banner=key_paused]").wait_for()
    shot(page, "key-paused")
    page.get_by_role("button", name="Resume key").click()
    page.locator("[data-banner=key_paused]").wait_for(state="detached")

    # Raise the cap from the banner: the very next request goes through again.
    page.locator("[data-banner=capped]").get_by_role("link", name="Raise cap").click()
    form = page.get_by_test_id("cap-form")
    form.locator("select[name=scope]").select_option("key")
    form.locator("select[name=period]").select_option("day")
    form.locator("select[name=api_key]").select_option(label="my-app")
    form.locator("input[name=limit_usd]").fill("5")
    form.get_by_role("button", name="Save cap").click()
    page.get_by_test_id("cap-saved").wait_for()
    assert _ask(client, "after raising the cap").choices[0].message.content
    page.goto(product.url("/dashboard/"))
    assert page.locator("[data-banner=capped]").count() == 0
    shot(page, "resumed")
