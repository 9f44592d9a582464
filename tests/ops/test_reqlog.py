from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from proxy.reqlog import BatchedLineHandler, JsonFormatter, log_request, upstream_headers


def test_one_json_line_per_request_without_prompts_or_keys() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("budgetllm.requests")
    logger.addHandler(handler)
    request_id = uuid.uuid4()
    try:
        log_request(
            request_id=request_id,
            account_id=7,
            api_key_id="9d1c7a52-0000-4000-8000-000000000001",
            endpoint="chat.completions",
            model="gpt-4o-mini",
            status=200,
            cache="MISS",
            input_tokens=12,
            output_tokens=30,
            cost_micros=45,
            upstream_ms=412.345,
            overhead_ms=1.234,
            total_ms=413.6,
        )
    finally:
        logger.removeHandler(handler)
    [line] = stream.getvalue().splitlines()
    data = json.loads(line)
    assert data["msg"] == "proxied request"
    assert data["request_id"] == str(request_id)
    assert data["api_key_id"] == "9d1c7a52-0000-4000-8000-000000000001"
    assert (data["status"], data["cache"], data["cost_micros"]) == (200, "MISS", 45)
    assert data["upstream_ms"] == 412.35 and data["overhead_ms"] == 1.23
    assert not {"messages", "prompt", "input", "authorization", "api_key"} & set(data)


def test_request_id_goes_upstream() -> None:
    rid = uuid.uuid4()
    assert upstream_headers(rid) == {"X-Client-Request-Id": str(rid)}


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _batched_logger(stream: io.StringIO) -> tuple[logging.Logger, BatchedLineHandler]:
    handler = BatchedLineHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.batched")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger, handler


def in_a_thread[T](test: Callable[[], T]) -> Callable[[], T]:
    """Runs the test in a thread of its own: the browser tests' Playwright keeps an event
    loop running in the main thread for the whole session."""

    @functools.wraps(test)
    def wrapper() -> T:
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(test).result()

    return wrapper


@in_a_thread
def test_request_lines_on_the_event_loop_are_written_in_one_batch_soon_after() -> None:
    stream = CountingStream()
    logger, handler = _batched_logger(stream)

    async def serve() -> tuple[str, str]:
        for i in range(3):
            logger.info("line %d", i)
        before = stream.getvalue()
        await asyncio.sleep(BatchedLineHandler.FLUSH_SECONDS * 3)
        return before, stream.getvalue()

    try:
        before, after = asyncio.run(serve())
    finally:
        logger.removeHandler(handler)
    assert before == ""
    assert [json.loads(line)["msg"] for line in after.splitlines()] == [
        "line 0",
        "line 1",
        "line 2",
    ]
    assert stream.writes == 1


@in_a_thread
def test_lines_without_a_loop_and_lines_pending_at_exit_are_never_held_back() -> None:
    stream = CountingStream()
    logger, handler = _batched_logger(stream)
    try:
        logger.info("from a management command")
        assert "from a management command" in stream.getvalue()

        async def emit_and_leave() -> None:
            logger.info("emitted just before shutdown")

        asyncio.run(emit_and_leave())  # the loop ends before the batch is due
        assert "emitted just before shutdown" not in stream.getvalue()
        handler.flush()  # what logging.shutdown() does at exit
        assert "emitted just before shutdown" in stream.getvalue()
    finally:
        logger.removeHandler(handler)
