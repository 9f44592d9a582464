"""The lean ASGI app that serves /v1 beside Django (mounted in budgetllm_site/asgi.py).

No Django middleware runs here: /v1 authenticates with bllm_ keys, not sessions or
CSRF, and the middleware stack's sync parts would add thread hops to every request.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.conf import settings

from .errors import ProxyError
from .validation import CHAT, EMBEDDINGS, RESPONSES
from .views import ClientGone, Exchange, Receive, Send, generation, models

logger = logging.getLogger(__name__)

# One model's page. The id is held to model-name characters: the path arrives decoded,
# and "/v1/models/../../files" must never become another GET at the provider.
MODEL_PATH = re.compile(r"/v1/models/[A-Za-z0-9][A-Za-z0-9._:-]*")

# path -> (endpoint, path at the provider)
ROUTES = {
    "/v1/chat/completions": (CHAT, "/chat/completions"),
    "/v1/responses": (RESPONSES, "/responses"),
    "/v1/embeddings": (EMBEDDINGS, "/embeddings"),
}


async def v1_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    ex = Exchange(scope, receive, send)
    path = scope["path"].rstrip("/")
    method = scope["method"]
    try:
        route = ROUTES.get(path)
        if route is not None:
            if method != "POST":
                raise _wrong_method(method, path, "POST")
            await generation(ex, route[0], route[1], max_body=settings.PROXY_MAX_BODY_BYTES)
        elif path == "/v1/models" or MODEL_PATH.fullmatch(path):
            if method != "GET":
                raise _wrong_method(method, path, "GET")
            await models(ex, path.removeprefix("/v1"))
        else:
            raise ProxyError(
                404,
                f"Invalid URL ({method} {path}): BudgetLLM serves /v1/chat/completions, "
                "/v1/responses, /v1/embeddings and /v1/models.",
                code="unknown_url",
                retryable=False,
            )
    except ProxyError as err:
        if not ex.response_started:
            await ex.respond_error(err)
    except ClientGone:
        ex.status = 499
    except Exception:
        logger.exception("unhandled error on %s %s (request %s)", method, path, ex.request_id)
        if not ex.response_started:
            await ex.respond_error(
                ProxyError(
                    500,
                    f"BudgetLLM hit an internal error (request {ex.request_id}).",
                    type_="server_error",
                )
            )
    finally:
        ex.observe()


def _wrong_method(method: str, path: str, allowed: str) -> ProxyError:
    return ProxyError(
        405,
        f"{method} is not allowed on {path}; use {allowed}.",
        code="method_not_allowed",
        retryable=False,
        headers=[(b"allow", allowed.encode())],  # a 405 must name what is allowed (RFC 9110)
    )
