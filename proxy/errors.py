"""OpenAI-shaped errors for /v1.

Every refusal the proxy makes itself uses OpenAI's envelope
`{"error": {"message", "type", "param", "code"}}` so the official SDKs raise the right
exception class with `e.type`, `e.code` and `e.param` filled in.
"""

from __future__ import annotations

import json
from typing import Any


class ProxyError(Exception):
    """A request the proxy answers itself, with an OpenAI error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
        retryable: bool = True,
        envelope: dict[str, Any] | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.extra = extra or {}
        # False adds `x-should-retry: false`, which stops the SDK's retry loop at once.
        self.retryable = retryable
        self._envelope = envelope
        # Response headers of this error beyond the usual ones (a 405's Allow).
        self.headers = headers

    def envelope(self) -> dict[str, Any]:
        if self._envelope is not None:
            return self._envelope
        return error_envelope(
            self.message, type_=self.type, code=self.code, param=self.param, extra=self.extra
        )

    def body(self) -> bytes:
        return json.dumps(self.envelope()).encode()


def error_envelope(
    message: str,
    *,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": type_, "param": param, "code": code}
    if extra:
        error.update(extra)
    return {"error": error}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ProxyError:
    return ProxyError(400, message, param=param, code=code, retryable=False)
