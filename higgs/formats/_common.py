"""Helpers shared by the built-in formats: input checks, ids, data URLs, error kinds, retry-after."""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError

from higgs.errors import ApiError, InvalidRequestError
from higgs.messages import ErrorInfo

log = logging.getLogger("higgs.formats")

_ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_ID_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^;,]*)*?);base64,(?P<data>.*)$", re.S)


def dropped(field: str, target: str, why: str = "no counterpart") -> None:
    """Record a field that cannot be translated to ``target`` (debug log, never an error)."""
    log.debug("dropping %s toward %s: %s", field, target, why)


def expect_dict(value: Any, param: str) -> dict[str, Any]:
    """``value`` as an object, else a 400 naming ``param``."""
    if not isinstance(value, dict):
        raise InvalidRequestError(f"'{param}' must be an object.", param=param)
    return value


def expect_list(value: Any, param: str) -> list[Any]:
    """``value`` as an array, else a 400 naming ``param``."""
    if not isinstance(value, list):
        raise InvalidRequestError(f"'{param}' must be an array.", param=param)
    return value


def expect_str(value: Any, param: str) -> str:
    """``value`` as a string, else a 400 naming ``param``."""
    if not isinstance(value, str):
        raise InvalidRequestError(f"'{param}' must be a string.", param=param)
    return value


@contextmanager
def invalid_as_400(what: str) -> Iterator[None]:
    """Turn a canonical-model validation failure the explicit checks missed into a 400, never a 500."""
    try:
        yield
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise InvalidRequestError(f"Invalid {what}: {field}: {first['msg']}.", param=field or None) from err


def opt_dict(value: Any, param: str) -> dict[str, Any] | None:
    """An optional object (``cache_control``, ...), else a 400."""
    return None if value is None else expect_dict(value, param)


def opt_str(value: Any, param: str) -> str | None:
    """An optional string, else a 400."""
    return None if value is None else expect_str(value, param)


def opt_number(body: Mapping[str, Any], key: str, prefix: str = "") -> float | None:
    """An optional number field (bools rejected), else a 400."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"'{prefix}{key}' must be a number.", param=f"{prefix}{key}")
    return float(value)


def opt_int(body: Mapping[str, Any], key: str, *, minimum: int | None = None, prefix: str = "") -> int | None:
    """An optional integer field, else a 400; ``minimum`` is checked when given."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidRequestError(f"'{prefix}{key}' must be an integer.", param=f"{prefix}{key}")
    if minimum is not None and value < minimum:
        raise InvalidRequestError(f"'{prefix}{key}' must be >= {minimum}.", param=f"{prefix}{key}")
    return value


def opt_bool(body: Mapping[str, Any], key: str, default: bool = False, prefix: str = "") -> bool:
    """An optional boolean field, else a 400."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequestError(f"'{prefix}{key}' must be a boolean.", param=f"{prefix}{key}")
    return value


def anthropic_tool_id(tool_id: str) -> str:
    """A tool id valid for Anthropic (``^[a-zA-Z0-9_-]+$``), derived deterministically from ``tool_id``.

    Valid ids pass unchanged; others get their bad characters replaced and a short hash of the original
    appended, so two distinct ids never collide and a tool_use and its tool_result still match.
    """
    if _ANTHROPIC_ID.match(tool_id):
        return tool_id
    digest = hashlib.sha256(tool_id.encode()).hexdigest()[:8]
    cleaned = _ID_BAD_CHARS.sub("_", tool_id)[:48]
    return f"{cleaned}_{digest}" if cleaned else f"toolu_{digest}"


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``(media_type, base64 data)`` of a ``data:...;base64,`` URL, or None for any other URL."""
    match = _DATA_URL.match(url)
    if not match:
        return None
    return match.group("mime") or "application/octet-stream", match.group("data")


def compact_json(value: Any) -> str:
    """JSON without spaces, as vendors send tool arguments."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# Canonical error kinds (see ``ErrorInfo.kind``) and the status each implies.
KIND_STATUS = {
    "invalid_request": 400,
    "context_length_exceeded": 400,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
    "request_too_large": 413,
    "rate_limit": 429,
    "api_error": 500,
    "upstream_unreachable": 502,
    "overloaded": 529,
    "timeout": 504,
}


def kind_for_status(status: int) -> str:
    """The canonical error kind an HTTP status implies, for bodies that say nothing better."""
    by_status = {400: "invalid_request", 401: "authentication", 403: "permission", 404: "not_found",
                 408: "timeout", 413: "request_too_large", 422: "invalid_request", 429: "rate_limit",
                 502: "upstream_unreachable", 503: "overloaded", 504: "timeout", 529: "overloaded"}
    if status in by_status:
        return by_status[status]
    return "invalid_request" if 400 <= status < 500 else "api_error"


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date), or None."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    if (ms := lowered.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def error_text(body: bytes, limit: int = 500) -> str:
    """A non-JSON error body as a short message."""
    text = body.decode("utf-8", errors="replace").strip()
    return text[:limit] + ("..." if len(text) > limit else "")


def iso_time(timestamp: int) -> str:
    """An RFC 3339 UTC time for a Unix timestamp (Anthropic's ``created_at``)."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error_from_exception(err: BaseException) -> ErrorInfo:
    """What a client sees when a provider raised mid-stream: its ``ApiError``, or a 500 that hides the details."""
    if isinstance(err, ApiError):
        return err.info
    log.error("stream failed", exc_info=err)
    return ErrorInfo(status=500, kind="api_error", message="The stream failed inside higgs.")
