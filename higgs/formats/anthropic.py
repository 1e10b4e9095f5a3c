"""The Anthropic wire format: Messages and token counting, both directions.

Registered through ``higgs_formats`` like any third-party format. Mapping decisions are in
``docs/translation.md``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from higgs.formats import _anthropic_chat as chat
from higgs.formats import _anthropic_stream as streams
from higgs.formats._common import (
    KIND_STATUS,
    error_text,
    expect_dict,
    invalid_as_400,
    iso_time,
    kind_for_status,
    retry_after,
)
from higgs.hookspecs import hookimpl
from higgs.interfaces import FormatRoute, Operation, UpstreamCall, UsageScan, WireFormat
from higgs.messages import ChatRequest, ChatResponse, ErrorInfo, ModelInfo, StreamEvent, Usage
from higgs.specs import FormatSpec

NAME = "anthropic"

# canonical kind -> (Anthropic error type, status)
KIND_TO_ERROR = {
    "invalid_request": ("invalid_request_error", 400),
    "context_length_exceeded": ("invalid_request_error", 400),
    "authentication": ("authentication_error", 401),
    "permission": ("permission_error", 403),
    "not_found": ("not_found_error", 404),
    "request_too_large": ("request_too_large", 413),
    "rate_limit": ("rate_limit_error", 429),
    "api_error": ("api_error", 500),
    "upstream_unreachable": ("api_error", 502),
    "timeout": ("timeout_error", 504),
    "overloaded": ("overloaded_error", 529),
}
TYPE_TO_KIND = {
    "invalid_request_error": "invalid_request",
    "authentication_error": "authentication",
    "permission_error": "permission",
    "billing_error": "permission",
    "not_found_error": "not_found",
    "request_too_large": "request_too_large",
    "rate_limit_error": "rate_limit",
    "api_error": "api_error",
    "timeout_error": "timeout",
    "overloaded_error": "overloaded",
}


def error_info_from_body(data: Any, status: int | None) -> ErrorInfo:
    """Canonical error from ``{"type": "error", "error": {"type", "message"}}`` (lenient about the shape)."""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, str):
        err = {"message": err}
    if not isinstance(err, dict):
        err = {"message": json.dumps(data)[:500] if data else ""}
    kind = TYPE_TO_KIND.get(str(err.get("type") or ""))
    message = str(err.get("message") or "")
    if kind == "invalid_request" and "prompt is too long" in message:
        kind = "context_length_exceeded"
    if kind is None or (kind == "invalid_request" and status and status not in (400, 422)):
        kind = kind_for_status(status) if status else "api_error"  # e.g. OpenAI's 401 invalid_api_key
    if status is None:
        status = KIND_STATUS.get(kind, 500)
    return ErrorInfo(status=status, kind=kind, message=message or f"upstream status {status}",
                     code="context_length_exceeded" if kind == "context_length_exceeded" else None)


class AnthropicFormat(WireFormat):
    """The Anthropic HTTP API (``/v1/messages``, ``/v1/messages/count_tokens``)."""

    name = NAME

    def routes(self) -> list[FormatRoute]:
        """Routes served for Anthropic clients."""
        return [
            FormatRoute("POST", "/v1/messages", operation="chat"),
            FormatRoute("POST", "/v1/messages/count_tokens", operation="count_tokens"),
        ]

    def claims(self, path: str) -> bool:
        """The ``/v1/messages`` family renders errors the Anthropic way."""
        return path == "/v1/messages" or path.startswith("/v1/messages/")

    # -- client side ------------------------------------------------------------------------------
    def parse_chat(self, body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
        """Parse a ``/v1/messages`` body (``anthropic-version``/``anthropic-beta`` are accepted, not required)."""
        with invalid_as_400("request"):
            return chat.parse_request(expect_dict(body, "body"))

    def parse_count_tokens(self, body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
        """Parse a ``/v1/messages/count_tokens`` body (no ``max_tokens``)."""
        with invalid_as_400("request"):
            return chat.parse_request(expect_dict(body, "body"), count_only=True)

    def render_chat(self, response: ChatResponse, request: ChatRequest) -> dict[str, Any]:
        """A ``message`` object."""
        return chat.render_response(response, request.model)

    def render_chat_stream(self, events: AsyncIterator[StreamEvent], request: ChatRequest) -> AsyncIterator[bytes]:
        """Messages SSE: ``message_start``, ``ping``, content blocks, ``message_delta``, ``message_stop``."""
        return streams.render_stream(events, model=request.model, render_error=lambda e: self.render_error(e)[1])

    def render_models(self, models: list[ModelInfo]) -> dict[str, Any]:
        """Anthropic's ``/v1/models`` page shape."""
        data = [{"type": "model", "id": m.id, "display_name": m.id, "created_at": iso_time(m.created),
                 "lifecycle": "active", "max_input_tokens": m.context_length} for m in models]
        return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}

    def render_count_tokens(self, count: int) -> dict[str, Any]:
        """``{"input_tokens": N}``."""
        return {"input_tokens": count}

    def render_error(self, error: ErrorInfo) -> tuple[int, dict[str, Any]]:
        """``(status, {"type": "error", "error": {"type", "message"}})``."""
        kind, default_status = KIND_TO_ERROR.get(error.kind, ("api_error", 500))
        status = error.status if error.status >= 400 else default_status
        return status, {"type": "error", "error": {"type": kind, "message": error.message}}

    def stream_error_bytes(self, error: ErrorInfo) -> bytes:
        """An ``event: error`` SSE event (the SDKs raise it as an API error)."""
        _, body = self.render_error(error)
        return b"event: error\ndata: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    def usage_scan(self, operation: Operation) -> UsageScan:
        """Usage sits in ``message_start`` (input, cache) and ``message_delta`` (output) events, or in a body;
        a ``count_tokens`` answer is its ``input_tokens``."""
        return _COUNT_SCAN if operation == "count_tokens" else _USAGE_SCAN

    # -- upstream side ----------------------------------------------------------------------------
    def build_upstream_chat(self, request: ChatRequest, *, default_max_tokens: int | None = None) -> UpstreamCall:
        """``POST /v1/messages`` (``n > 1`` is a 400: Anthropic answers once per request)."""
        return UpstreamCall(path="/v1/messages", body=chat.build_body(request, default_max_tokens),
                            headers={"anthropic-version": chat.API_VERSION})

    def parse_upstream_chat(self, body: dict[str, Any]) -> ChatResponse:
        """Canonical response from a ``message`` body."""
        if not isinstance(body, dict):
            raise ValueError("unreadable upstream response: not a JSON object")
        try:
            return chat.parse_response(body)
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            raise ValueError(f"unreadable upstream response: {err}") from err

    def parse_upstream_chat_stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[StreamEvent]:
        """Canonical events from a Messages stream, incrementally."""
        return streams.parse_stream(chunks, lambda data: error_info_from_body(data, None))

    def build_upstream_count_tokens(self, request: ChatRequest) -> UpstreamCall:
        """``POST /v1/messages/count_tokens``."""
        return UpstreamCall(path="/v1/messages/count_tokens", body=chat.build_body(request, count_only=True),
                            headers={"anthropic-version": chat.API_VERSION})

    def parse_upstream_count_tokens(self, body: dict[str, Any]) -> int:
        """The ``input_tokens`` of a count_tokens answer."""
        return int(body["input_tokens"])

    def parse_upstream_error(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> ErrorInfo:
        """Canonical error from an upstream Anthropic error response."""
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = {"error": {"message": error_text(body) or f"upstream status {status}"}}
        info = error_info_from_body(data, status)
        wait = retry_after(headers)
        return info.model_copy(update={"retry_after": wait}) if wait is not None else info

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """``x-api-key`` plus the API version Anthropic requires."""
        return {"x-api-key": api_key, "anthropic-version": chat.API_VERSION}


def _read_usage(event: dict[str, Any], usage: Usage) -> Usage:
    message = event.get("message")
    if isinstance(message, dict):  # message_start
        return chat.parse_usage(message.get("usage"), usage)
    raw = event.get("usage")
    return chat.parse_usage(raw, usage) if isinstance(raw, dict) else usage


def _read_count(event: dict[str, Any], usage: Usage) -> Usage:
    count = event.get("input_tokens")
    return Usage(input_tokens=count) if isinstance(count, int) else usage


_USAGE_SCAN = UsageScan(marker=b'"usage"', read=_read_usage)
_COUNT_SCAN = UsageScan(marker=b'"input_tokens"', read=_read_count)


@hookimpl
def higgs_formats() -> Iterable[FormatSpec]:
    """Register the Anthropic wire format."""
    return [FormatSpec(name=NAME, factory=AnthropicFormat, description="Anthropic Messages API")]
