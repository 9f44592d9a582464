"""The concurrent load of the overshoot proof (used by the test and bench/overshoot.py).

Every request bypasses the cache (each must cost), half stream, prompts vary in length,
and the output limits mix small, large and absent (the ledger then clamps to what the
cap affords), so reservations of very different sizes race for the same cap.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

MAX_TOKENS_CYCLE: tuple[int | None, ...] = (20, 10, None, 5000, 16)


def request_body(i: int, model: str) -> dict[str, object]:
    body: dict[str, object] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"Question {i}: " + "why " * (i * 37 % 300)},
        ],
        "stream": i % 2 == 0,
    }
    limit = MAX_TOKENS_CYCLE[i % len(MAX_TOKENS_CYCLE)]
    if limit is not None:
        body["max_tokens"] = limit
    return body


async def _one(client: httpx.AsyncClient, url: str, key: str, i: int, model: str) -> str:
    body = request_body(i, model)
    headers = {
        "Authorization": f"Bearer {key}",
        "Cache-Control": "no-cache",
        # Streams pace their events; plain answers wait a little: requests overlap.
        "X-Fake-Delay-Ms": "3" if body["stream"] else str(5 + i % 4 * 10),
    }
    async with client.stream("POST", url, json=body, headers=headers) as resp:
        async for _ in resp.aiter_bytes():
            pass
        if resp.status_code != 200:
            return str(resp.status_code)
        return "200-stream" if body["stream"] else "200"


async def fire(
    base_url: str, key: str, *, requests: int = 200, concurrency: int = 50, model: str = "gpt-4o"
) -> Counter[str]:
    """Send `requests` requests, `concurrency` at a time; count outcomes by status."""
    url = base_url.rstrip("/") + "/chat/completions"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    sem = asyncio.Semaphore(concurrency)
    outcomes: Counter[str] = Counter()
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def run(i: int) -> None:
            async with sem:
                outcomes[await _one(client, url, key, i, model)] += 1

        await asyncio.gather(*(run(i) for i in range(requests)))
    return outcomes
