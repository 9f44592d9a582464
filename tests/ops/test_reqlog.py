from __future__ import annotations

import io
import json
import logging
import uuid

from proxy.reqlog import JsonFormatter, log_request, upstream_headers


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
