"""A local stand-in for Slack and Discord incoming webhooks.

It checks each body against the rules those services document for incoming webhooks
(Slack: `text`/Block Kit limits; Discord: execute-webhook fields and embed limits) and
answers the way they do: Slack 200 "ok" or 400 with an error word, Discord 204 or 400
with a JSON error. `fail_next(path, status, times)` makes a path answer an error.

Paths: /services/<T>/<B>/<token> (Slack), /api/webhooks/<id>/<token> (Discord).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SLACK_TOP = {"text", "blocks", "attachments", "thread_ts", "mrkdwn", "unfurl_links", "unfurl_media"}
DISCORD_TOP = {
    "content",
    "username",
    "avatar_url",
    "tts",
    "embeds",
    "allowed_mentions",
    "components",
    "flags",
    "thread_name",
    "attachments",
    "applied_tags",
    "poll",
}
EMBED_KEYS = {
    "title",
    "type",
    "description",
    "url",
    "timestamp",
    "color",
    "footer",
    "image",
    "thumbnail",
    "video",
    "provider",
    "author",
    "fields",
}


def _text_object(obj: Any, *, kinds: set[str], limit: int) -> str | None:
    if not isinstance(obj, dict) or set(obj) - {"type", "text", "emoji", "verbatim"}:
        return "invalid text object"
    if obj.get("type") not in kinds or not isinstance(obj.get("text"), str):
        return "invalid text object type"
    if not 1 <= len(obj["text"]) <= limit:
        return "text length"
    return None


def slack_errors(body: Any) -> str | None:
    """None if Slack would accept the incoming-webhook body, else Slack's error word."""
    if not isinstance(body, dict) or set(body) - SLACK_TOP:
        return "invalid_payload"
    if not body.get("text") and not body.get("blocks"):
        return "no_text"
    blocks = body.get("blocks", [])
    if not isinstance(blocks, list) or len(blocks) > 50:
        return "invalid_blocks"
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            if set(block) - {"type", "text", "block_id"}:
                return "invalid_blocks"
            if _text_object(block.get("text"), kinds={"plain_text"}, limit=150):
                return "invalid_blocks"
        elif kind == "section":
            if set(block) - {"type", "text", "fields", "block_id", "accessory"}:
                return "invalid_blocks"
            if "text" not in block and "fields" not in block:
                return "invalid_blocks"
            if "text" in block and _text_object(
                block["text"], kinds={"plain_text", "mrkdwn"}, limit=3000
            ):
                return "invalid_blocks"
            fields = block.get("fields", [])
            if len(fields) > 10 or any(
                _text_object(f, kinds={"plain_text", "mrkdwn"}, limit=2000) for f in fields
            ):
                return "invalid_blocks"
        elif kind == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 25:
                return "invalid_blocks"
            for element in elements:
                if element.get("type") != "button" or set(element) - {
                    "type",
                    "text",
                    "url",
                    "action_id",
                    "value",
                    "style",
                }:
                    return "invalid_blocks"
                if _text_object(element.get("text"), kinds={"plain_text"}, limit=75):
                    return "invalid_blocks"
                if len(element.get("url", "")) > 3000:
                    return "invalid_blocks"
        else:
            return "invalid_blocks"
    return None


def discord_errors(body: Any) -> str | None:
    """None if Discord would accept the execute-webhook body, else a reason."""
    if not isinstance(body, dict) or set(body) - DISCORD_TOP:
        return "unknown field"
    if not body.get("content") and not body.get("embeds"):
        return "Cannot send an empty message"
    if len(body.get("content", "")) > 2000:
        return "content too long"
    embeds = body.get("embeds", [])
    if not isinstance(embeds, list) or len(embeds) > 10:
        return "too many embeds"
    total = 0
    for embed in embeds:
        if set(embed) - EMBED_KEYS:
            return "unknown embed field"
        if len(embed.get("title", "")) > 256 or len(embed.get("description", "")) > 4096:
            return "embed text too long"
        color = embed.get("color", 0)
        if not isinstance(color, int) or not 0 <= color <= 0xFFFFFF:
            return "bad color"
        fields = embed.get("fields", [])
        if len(fields) > 25:
            return "too many fields"
        for f in fields:
            if set(f) - {"name", "value", "inline"}:
                return "unknown field key"
            if not 1 <= len(f.get("name", "")) <= 256 or not 1 <= len(f.get("value", "")) <= 1024:
                return "field length"
            if "inline" in f and not isinstance(f["inline"], bool):
                return "inline must be a boolean"
            total += len(f["name"]) + len(f["value"])
        total += len(embed.get("title", "")) + len(embed.get("description", ""))
    if total > 6000:
        return "embeds exceed 6000 characters"
    mentions = body.get("allowed_mentions")
    if mentions is not None and (
        set(mentions) - {"parse", "roles", "users", "replied_user"}
        or set(mentions.get("parse", [])) - {"roles", "users", "everyone"}
    ):
        return "bad allowed_mentions"
    return None


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeWebhooks:
    port: int
    server: ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    failures: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def slack_url(self, tail: str = "XXXXXXXXXXXXXXXXXXXXXXXX") -> str:
        return f"{self.origin}/services/T00000000/B00000000/{tail}"

    def discord_url(self, tail: str = "abcDEF123_-xyz") -> str:
        return f"{self.origin}/api/webhooks/123456789012345678/{tail}"

    def fail_next(self, path_contains: str, status: int, times: int) -> None:
        with self.lock:
            self.failures[path_contains] = [status] * times

    def hits(self, path_contains: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if path_contains in r.path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start() -> FakeWebhooks:
    holder: dict[str, FakeWebhooks] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _answer(self, status: int, body: bytes, content_type: str = "text/html") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            fake = holder["fake"]
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            with fake.lock:
                fake.received.append(Received(self.path, dict(self.headers), body))
                forced = next((k for k, v in fake.failures.items() if k in self.path and v), None)
                status = fake.failures[forced].pop(0) if forced else None
            if self.path.startswith("/services/"):
                if status:
                    return self._answer(status, b"internal_error")
                if self.headers.get("Content-Type") != "application/json":
                    return self._answer(400, b"invalid_payload")
                error = slack_errors(body)
                return self._answer(400, error.encode()) if error else self._answer(200, b"ok")
            if self.path.startswith("/api/webhooks/"):
                if status:
                    return self._answer(status, b'{"message": "error"}', "application/json")
                error = discord_errors(body)
                if error:
                    payload = json.dumps({"code": 50035, "message": error}).encode()
                    return self._answer(400, payload, "application/json")
                self.send_response(204)
                self.end_headers()
                return None
            return self._answer(404, b"no_service")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake = FakeWebhooks(port=int(server.server_address[1]), server=server)
    holder["fake"] = fake
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake
