"""Metrics hook the proxy calls once per request.

A no-op placeholder: the ops helper's Prometheus version replaces this module with the
same signature.
"""

from __future__ import annotations


def observe_request(
    *,
    status: int,
    cache: str,
    cost_micros: int,
    saved_micros: int,
    upstream_seconds: float | None,
    overhead_seconds: float,
    refused_scope: str | None,
) -> None:
    return None
