"""Parse and bound a /v1 request body before anything is reserved.

The ledger reserves the worst case before the provider is called, so this module's job
is an upper bound on the input tokens that can never be too low. No tokenizer can be
downloaded here; instead we use the fact that OpenAI's byte-level BPE encodings spend at
least one UTF-8 byte of text per token. The raw JSON body contains every prompt-bearing
string (escaped, which is never shorter than its UTF-8 form) plus the punctuation around
each message, which more than covers the few formatting tokens per message. So, when a
body carries no media, `len(raw body)` is a safe bound found in O(1).

Images are not bounded by their bytes (a URL is short, a base64 image long), so each one
counts as the model's image ceiling instead of its bytes: `PROXY_IMAGE_TOKEN_CEILING`, or
more for models that bill an image as many more tokens (`IMAGE_TOKEN_CEILINGS`). Audio
(also a previous audio answer by id), files, stored conversation state
(`previous_response_id`, `conversation`, item references, reasoning or compaction items
without their encrypted content, stored prompts) and hosted tools (also in an input
item's own `tools`) bill amounts that cannot be bounded before the call: they are
refused with a clear message rather than risk a cap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from .errors import ProxyError, bad_request

CHAT = "chat.completions"
RESPONSES = "responses"
EMBEDDINGS = "embeddings"

# Markers that make the O(1) bound unsafe: media whose tokens are not tied to its bytes.
# A `\u` escape could spell a media key without matching these, so it forces the walk too.
_MEDIA_MARKERS = (
    b'"image_url"',
    b'"input_image"',
    b'"input_audio"',
    b'"input_file"',
    b'"file"',
    b'"item_reference"',
    b'"computer_screenshot"',
    b"\\u",
)

# A Responses computer-use screenshot is billed as an image, whatever its URL's length.
_IMAGE_PART_TYPES = {"image_url", "input_image", "computer_screenshot"}
# The most tokens one image can bill, where a model bills more than the default ceiling.
# gpt-4o-mini prices an image at 2,833 tokens plus 5,667 per 512-px tile, and a
# high-detail image has at most 8 tiles (768 x 2048 after scaling): 48,169 tokens.
IMAGE_TOKEN_CEILINGS = {"gpt-4o-mini": 48_169}
_UNBOUNDED_PART_TYPES = {
    "input_audio": "audio input",
    "input_file": "file input",
    "file": "file input",
    "item_reference": "item references (stored items)",
}
_FUNCTION_TOOL_TYPES = {"function", "custom"}
# Responses input items that carry tools of their own (beside the request's `tools`).
_TOOL_ITEM_TYPES = {"additional_tools", "tool_search_output"}
# Responses input items whose content is sealed: sent as `encrypted_content`, or else
# restored by the provider from what it stored under the item's id.
_SEALED_ITEM_TYPES = {"reasoning", "compaction"}


@dataclass(slots=True)
class ParsedRequest:
    endpoint: str
    body: dict[str, Any]
    raw: bytes
    model: str
    stream: bool
    # Chat only: whether the client itself asked for the usage chunk of a stream.
    client_wants_usage: bool
    requested_output_tokens: int | None
    # Where a clamp is written, in the field the client used (or the endpoint's default).
    output_fields: tuple[str, ...]
    choices: int
    input_tokens_bound: int


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        # We bound what we read (the last value), but the provider may read the first:
        # an ambiguous body could make it generate more than was reserved.
        raise bad_request(
            f"The JSON body repeats the key '{dup}'; send each key once.",
            param=dup,
            code="invalid_json",
        )
    return obj


def _no_constant(name: str) -> Any:
    # Python reads NaN and Infinity; JSON has neither, and the provider refuses them only
    # after a round trip (with a reservation held meanwhile).
    raise ValueError(f"{name} is not a JSON number")


_INFINITIES = (float("inf"), float("-inf"))


def parse_json_object(raw: bytes) -> dict[str, Any]:
    return _parse_json_object(raw)[0]


def _parse_json_object(raw: bytes) -> tuple[dict[str, Any], int]:
    """The body, and how many bytes its floats may differ by between the raw body and the
    body written again (Python writes `1e15` as `1000000000000000.0`, and `1.000` as `1.0`):
    the input bound adds them, whichever of the two forms is forwarded."""
    slack = 0

    def number(text: str) -> float:
        nonlocal slack
        value = float(text)
        if value in _INFINITIES:
            # 1e400 reads as infinity, and would be written again as `Infinity`.
            raise ValueError(f"the number {text[:32]} is too large")
        slack += abs(len(text) - len(repr(value)))
        return value

    try:
        # Decoded as UTF-8 here, not by json.loads: given bytes, it reads UTF-16 and UTF-32
        # as well, and everything after this looks at the raw bytes as UTF-8 (the media
        # markers, the byte bound), so an image in a UTF-16 body went unseen. A BOM is
        # refused too (json.loads names it), rather than forwarded as it came.
        body = json.loads(
            raw.decode(),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constant,
            parse_float=number,
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(
            f"We could not parse the JSON body of your request ({exc}). "
            "The body must be a JSON object sent with Content-Type: application/json.",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise too_deep() from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return body, slack


def too_deep() -> ProxyError:
    return bad_request(
        "The JSON body is nested too deeply to be read; flatten it.", code="invalid_json"
    )


def lone_surrogate() -> ProxyError:
    return bad_request(
        "The JSON body contains a lone UTF-16 surrogate escape (such as \\ud800), "
        "which is not valid text. Send valid UTF-8 text.",
        code="invalid_json",
    )


def _opt_int(body: dict[str, Any], name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(
            f"Invalid type for '{name}': expected an integer, but got {type(value).__name__}.",
            param=name,
            code="invalid_type",
        )
    if value < minimum:
        raise bad_request(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {minimum}, "
            f"but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    return value


def _opt_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(
            f"Invalid type for '{name}': expected a boolean, but got {type(value).__name__}.",
            param=name,
            code="invalid_type",
        )
    return value


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise bad_request("You must provide a model parameter.", param="model", code="missing")
    if not isinstance(model, str) or not model.strip():
        raise bad_request(
            "Invalid type for 'model': expected a non-empty string.",
            param="model",
            code="invalid_type",
        )
    return model


def image_token_ceiling(model: str) -> int:
    # A fine-tune bills an image as its base model does ("ft:gpt-4o-mini-2024-07-18:org::id").
    name = model.strip().lower().removeprefix("ft:")
    for prefix, ceiling in IMAGE_TOKEN_CEILINGS.items():
        if name.startswith(prefix):
            return max(ceiling, int(settings.PROXY_IMAGE_TOKEN_CEILING))
    return int(settings.PROXY_IMAGE_TOKEN_CEILING)


def _utf8_len(text: str) -> int:
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        # A lone surrogate escape ("\\ud800") is valid JSON but not text any tokenizer
        # (or provider) takes: refuse it clearly rather than forward it.
        raise lone_surrogate() from None


def _walk_bound(value: Any, param: str, image_ceiling: int) -> int:
    """JSON size of `value` with each image counted as the image ceiling, not its bytes.

    Every string and key counts its UTF-8 bytes (at least one byte per token) and every
    number its full JSON text, so nothing inside a tool schema can be under-counted.
    """
    if isinstance(value, str):
        return _utf8_len(value) + 2
    if isinstance(value, list):
        return 2 + sum(_walk_bound(v, param, image_ceiling) + 1 for v in value)
    if isinstance(value, dict):
        kind = value.get("type")
        if isinstance(kind, str):
            if kind in _UNBOUNDED_PART_TYPES:
                raise bad_request(
                    f"BudgetLLM does not forward {_UNBOUNDED_PART_TYPES[kind]} ('{kind}' in "
                    f"'{param}'): its token cost cannot be bounded before the call, so a cap "
                    "could be exceeded. Send text and images only.",
                    param=param,
                    code="unsupported_content",
                )
            if kind in _IMAGE_PART_TYPES:
                detail = value.get("detail")
                if detail is None and isinstance(value.get("image_url"), dict):
                    detail = value["image_url"].get("detail")
                if detail not in (None, "auto", "low", "high"):
                    raise bad_request(
                        f"Image detail '{detail}' is not supported through BudgetLLM; use "
                        "'low', 'high' or 'auto'.",
                        param=param,
                        code="unsupported_content",
                    )
                return image_ceiling
        return 2 + sum(
            _utf8_len(str(k)) + 4 + _walk_bound(v, param, image_ceiling) for k, v in value.items()
        )
    # Numbers, booleans and null: their JSON text (a 300-digit number is 300 bytes).
    return len(json.dumps(value)) + 1


def _has_media_marker(raw: bytes) -> bool:
    # find(), not `in`: on CPython 3.12 `marker in raw` first tries the marker as an
    # integer and formats a TypeError it throws away (~2,600 instructions a marker).
    for marker in _MEDIA_MARKERS:
        if raw.find(marker) != -1:
            return True
    return False


def _input_bound(raw: bytes, body: dict[str, Any], fields: tuple[str, ...], model: str) -> int:
    if not _has_media_marker(raw):
        return len(raw)
    # Media present: walk the prompt-bearing fields, counting each image at the ceiling.
    ceiling = image_token_ceiling(model)
    try:
        return sum(_walk_bound(body[f], f, ceiling) for f in fields if f in body) + 64
    except RecursionError:
        raise too_deep() from None


def _check_tools(body: dict[str, Any], where: str = "") -> None:
    """Function tools only, in `body["tools"]` (the request's, or an input item's)."""
    tools = body.get("tools")
    if tools is None:
        return
    param = f"{where}tools"
    if not isinstance(tools, list):
        raise bad_request(
            f"Invalid type for '{param}': expected an array.", param=param, code="invalid_type"
        )
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in _FUNCTION_TOOL_TYPES:
            raise bad_request(
                f"Tool type '{kind}' ({param}[{i}]) is not supported through BudgetLLM: hosted "
                "tools bill per call and per retrieved token, which cannot be bounded before "
                "the call. Use function tools.",
                param=f"{param}[{i}]",
                code="unsupported_tool",
            )


# Models that run a web search on every request (with or without web_search_options) and
# bill it per call, on top of tokens: the price database prices their tokens only.
def _check_search_model(model: str) -> None:
    name = model.lower()
    # Two plain searches: this runs on every request (a generator over a tuple cost more).
    if name.find("search-preview") != -1 or name.find("search-api") != -1:
        raise bad_request(
            f"The model '{model}' is not supported through BudgetLLM: it searches the web on "
            "every request and bills each search per call, beyond its tokens, so a cap "
            "could be exceeded. Use a model without built-in search.",
            param="model",
            code="unsupported_model",
        )


def _check_service_tier(body: dict[str, Any]) -> None:
    # Priority processing bills at a higher rate than the price database's standard one.
    if body.get("service_tier") in ("priority", "scale"):
        raise bad_request(
            "service_tier 'priority' is not supported through BudgetLLM: it bills above the "
            "standard price the caps are enforced with. Use 'auto', 'default' or 'flex'.",
            param="service_tier",
            code="unsupported_parameter",
        )


_CHAT_PROMPT_FIELDS = (
    "messages",
    "tools",
    "functions",
    "tool_choice",
    "response_format",
)


def parse_chat(raw: bytes) -> ParsedRequest:
    body, slack = _parse_json_object(raw)
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request(
            "Invalid 'messages': expected a non-empty array of message objects.",
            param="messages",
            code="invalid_type" if not isinstance(messages, list) else "empty_array",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(
                f"Invalid 'messages[{i}]': expected an object with a string 'role'.",
                param=f"messages[{i}]",
                code="invalid_type",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(
                f"Invalid type for 'messages[{i}].content': expected a string or an array.",
                param=f"messages[{i}].content",
                code="invalid_type",
            )
        if message.get("audio") is not None:
            # An assistant message's `{"audio": {"id": "audio_…"}}` has the provider put a
            # previous audio answer back into the prompt, billed as audio input tokens
            # (priced far above text) that the id's few bytes do not bound.
            raise bad_request(
                f"BudgetLLM does not forward audio from earlier answers ('messages[{i}].audio'):"
                " the provider bills it as audio input tokens, which cannot be bounded before "
                "the call, so a cap could be exceeded. Send the answer's transcript as text.",
                param=f"messages[{i}].audio",
                code="unsupported_content",
            )
    stream = _opt_bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request(
            "Invalid type for 'stream_options': expected an object.",
            param="stream_options",
            code="invalid_type",
        )
    client_wants_usage = bool(options and options.get("include_usage") is True)
    n = _opt_int(body, "n", minimum=1) or 1
    if n > 128:
        raise bad_request("Invalid 'n': at most 128 choices.", param="n", code="invalid_value")
    max_completion = _opt_int(body, "max_completion_tokens", minimum=1)
    max_tokens = _opt_int(body, "max_tokens", minimum=1)
    _check_tools(body)
    _check_service_tier(body)
    _check_search_model(model)
    if body.get("audio") is not None or "audio" in (body.get("modalities") or []):
        raise bad_request(
            "Audio output is not supported through BudgetLLM: audio tokens are priced "
            "separately and cannot be capped reliably.",
            param="modalities",
            code="unsupported_parameter",
        )
    if body.get("web_search_options") is not None:
        raise bad_request(
            "web_search_options is not supported through BudgetLLM: searches bill per call "
            "and per retrieved token, which cannot be bounded before the call.",
            param="web_search_options",
            code="unsupported_parameter",
        )
    if body.get("prediction") is not None:
        raise bad_request(
            "Predicted outputs are not supported through BudgetLLM: rejected prediction tokens "
            "are billed beyond max_completion_tokens, so a cap could be exceeded.",
            param="prediction",
            code="unsupported_parameter",
        )
    if max_completion is not None or max_tokens is None:
        fields: tuple[str, ...] = ("max_completion_tokens",)
        if max_tokens is not None:
            fields = ("max_completion_tokens", "max_tokens")
    else:
        fields = ("max_tokens",)
    # Both limits set: the provider may honour either, so reserve for the larger one (a
    # clamp writes the same value into both fields).
    # A limit too large to price means "no limit named": the ledger writes its bound, into
    # both fields when both are set (a huge one left as it came would be no limit at all).
    given = [v for v in (max_completion, max_tokens) if v is not None]
    requested = max(given) if given and max(given) < 1 << 62 else None
    return ParsedRequest(
        endpoint=CHAT,
        body=body,
        raw=raw,
        model=model,
        stream=stream,
        client_wants_usage=client_wants_usage,
        requested_output_tokens=requested,
        output_fields=fields,
        choices=n,
        input_tokens_bound=_input_bound(raw, body, _CHAT_PROMPT_FIELDS, model) + slack,
    )


_RESPONSES_PROMPT_FIELDS = ("input", "instructions", "tools", "tool_choice", "text")


def parse_responses(raw: bytes) -> ParsedRequest:
    body, slack = _parse_json_object(raw)
    model = _model(body)
    input_ = body.get("input")
    if input_ is None or not isinstance(input_, str | list):
        raise bad_request(
            "Invalid 'input': expected a string or an array of input items.",
            param="input",
            code="invalid_type" if input_ is not None else "missing",
        )
    if isinstance(input_, list):
        for i, item in enumerate(input_):
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind is None or kind == "message":
                # An item reference's `type` is optional: `{"id": "msg_…"}` alone makes the
                # provider bill the stored item's tokens, which its few bytes do not bound
                # (and no media marker sends it to the walk that refuses typed ones). Every
                # other item without a type is a message, which has a role.
                if kind is None and "role" not in item:
                    raise bad_request(
                        f"BudgetLLM does not forward item references (stored items) "
                        f"('input[{i}]' has no type and no role, so it refers to a stored "
                        "item by id): its token cost cannot be bounded before the call, so a "
                        "cap could be exceeded. Send the item's full content instead.",
                        param=f"input[{i}]",
                        code="unsupported_content",
                    )
            elif kind in _SEALED_ITEM_TYPES:
                # Without its encrypted content, the provider restores a reasoning (or
                # compaction) item stored under its id (`store` defaults to true) and bills
                # all its tokens as input: the id's few bytes do not bound them.
                sealed = item.get("encrypted_content")
                if not isinstance(sealed, str) or not sealed:
                    raise bad_request(
                        f"BudgetLLM does not forward {kind} items without their "
                        f"encrypted_content ('input[{i}]'): the provider would restore the "
                        "stored item by its id and bill its tokens, which cannot be bounded "
                        "before the call, so a cap could be exceeded. Pass the item back with "
                        "its encrypted_content (include 'reasoning.encrypted_content').",
                        param=f"input[{i}].encrypted_content",
                        code="unsupported_content",
                    )
            elif kind in _TOOL_ITEM_TYPES:
                # Tools handed to the model in an input item are held to what `tools` is.
                _check_tools(item, f"input[{i}].")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad_request(
            "Invalid type for 'instructions': expected a string.",
            param="instructions",
            code="invalid_type",
        )
    for name, why in (
        ("previous_response_id", "the stored conversation it continues"),
        ("conversation", "the stored conversation it continues"),
        ("prompt", "the stored prompt template it expands"),
    ):
        if body.get(name) is not None:
            raise bad_request(
                f"'{name}' is not supported through BudgetLLM: the tokens of {why} are billed "
                "as input but cannot be counted before the call, so a cap could be exceeded. "
                "Send the full input instead.",
                param=name,
                code="unsupported_parameter",
            )
    if body.get("background") is True:
        raise bad_request(
            "Background responses are not supported through BudgetLLM: their cost is known "
            "only after the request has returned.",
            param="background",
            code="unsupported_parameter",
        )
    stream = _opt_bool(body, "stream")
    requested = _opt_int(body, "max_output_tokens", minimum=1)
    _check_tools(body)
    _check_service_tier(body)
    _check_search_model(model)
    return ParsedRequest(
        endpoint=RESPONSES,
        body=body,
        raw=raw,
        model=model,
        stream=stream,
        client_wants_usage=True,  # usage always arrives in response.completed
        requested_output_tokens=requested,
        output_fields=("max_output_tokens",),
        choices=1,
        input_tokens_bound=_input_bound(raw, body, _RESPONSES_PROMPT_FIELDS, model) + slack,
    )


# OpenAI's embeddings limits: inputs per request, and tokens per input.
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_INPUT_TOKENS = 8192


def parse_embeddings(raw: bytes) -> ParsedRequest:
    body = parse_json_object(raw)
    model = _model(body)
    input_ = body.get("input")
    valid = isinstance(input_, str) or (
        isinstance(input_, list)
        and bool(input_)
        and (
            all(isinstance(v, str) for v in input_)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in input_)
            or all(
                isinstance(v, list)
                and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
                for v in input_
            )
        )
    )
    if not valid:
        raise bad_request(
            "Invalid 'input': expected a string, an array of strings, an array of token "
            "integers or an array of token arrays.",
            param="input",
            code="invalid_type",
        )
    if body.get("stream"):
        raise bad_request(
            "Embeddings cannot be streamed.", param="stream", code="unsupported_parameter"
        )
    # The provider's own limits, checked before the cache key is computed over the body:
    # more is refused there anyway, after costing this worker's loop the work.
    if isinstance(input_, list):
        # A flat list of integers is one input (token ids); any other list, many inputs.
        one = isinstance(input_[0], int)
        arrays = [input_] if one else [v for v in input_ if isinstance(v, list)]
        if not one and len(input_) > MAX_EMBEDDING_INPUTS:
            raise bad_request(
                f"Invalid 'input': {len(input_)} items; at most {MAX_EMBEDDING_INPUTS} per "
                "request.",
                param="input",
                code="array_above_max_length",
            )
    else:
        arrays = []
    if any(len(v) > MAX_EMBEDDING_INPUT_TOKENS for v in arrays):
        raise bad_request(
            f"Invalid 'input': a token array longer than {MAX_EMBEDDING_INPUT_TOKENS} tokens.",
            param="input",
            code="array_above_max_length",
        )
    # Token arrays: each integer takes at least one byte plus a comma in the raw body,
    # so len(raw) bounds them as well as it bounds text.
    return ParsedRequest(
        endpoint=EMBEDDINGS,
        body=body,
        raw=raw,
        model=model,
        stream=False,
        client_wants_usage=False,
        requested_output_tokens=0,
        output_fields=(),
        choices=1,
        input_tokens_bound=len(raw),
    )


PARSERS = {CHAT: parse_chat, RESPONSES: parse_responses, EMBEDDINGS: parse_embeddings}
