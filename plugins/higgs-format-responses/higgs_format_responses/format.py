"""``ResponsesFormat``: the OpenAI Responses API as a higgs wire format, both directions.

Routes: ``POST /v1/responses`` (the gateway pipeline, behind a small handler that checks
``previous_response_id``), ``POST /v1/responses/input_tokens`` (token counting), ``GET`` and
``DELETE /v1/responses/{response_id}`` for stored responses.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

from higgs.errors import ApiError, InvalidRequestError
from higgs.interfaces import FormatRoute, Operation, RouteQuery, UpstreamCall, UsageScan, WireFormat
from higgs.messages import ChatRequest, ChatResponse, ErrorInfo, Message, ModelInfo, StreamEvent, Usage
from higgs_format_responses import parse, render, upstream
from higgs_format_responses.store import ResponsesSettings, ResponseStore, StoredResponse
from higgs_format_responses.tools import ToolMap

PATH = "/v1/responses"
#: Set by the POST handler when an unknown ``previous_response_id`` is going to an upstream that speaks
#: Responses itself (pass-through): that upstream owns the id, so parsing must not refuse it.
_FORWARD_UNKNOWN_PREVIOUS: contextvars.ContextVar[bool] = contextvars.ContextVar("responses_forward_previous",
                                                                                 default=False)


def _not_found(rid: str, param: str | None = None) -> ApiError:
    kind = "previous_response_not_found" if param else "response_not_found"
    what = "Previous response" if param else "Response"
    return ApiError(404, "not_found", f"{what} with id '{rid}' not found.", param=param, code=kind)


class ResponsesFormat(WireFormat):
    """The ``responses`` wire format: client side, upstream side and the response store."""

    name = "responses"

    def __init__(self, settings: ResponsesSettings | None = None) -> None:
        self.settings = settings or ResponsesSettings()
        self.store = ResponseStore(self.settings.store_size)

    def configure(self, section: Mapping[str, Any]) -> None:
        """Apply ``[plugins.responses-format]`` (validated; a bad key is a clear error at startup)."""
        from pydantic import ValidationError

        from higgs.errors import ConfigError

        try:
            self.settings = ResponsesSettings.model_validate(dict(section))
        except ValidationError as err:
            raise ConfigError(f"[plugins.responses-format]: {err}") from err
        self.store.resize(self.settings.store_size)

    def routes(self) -> list[FormatRoute]:
        """``POST /v1/responses`` and the stored-response endpoints."""
        return [
            FormatRoute("POST", PATH, handler=self.handle_create),
            FormatRoute("POST", PATH + "/input_tokens", operation="count_tokens"),
            FormatRoute("GET", PATH + "/{response_id}", handler=self.handle_get),
            FormatRoute("GET", PATH + "/{response_id}/input_items", handler=self.handle_input_items),
            FormatRoute("DELETE", PATH + "/{response_id}", handler=self.handle_delete),
        ]

    def claims(self, path: str) -> bool:
        """Errors under ``/v1/responses`` are Responses errors."""
        return path == PATH or path.startswith(PATH + "/")

    # -- handlers -----------------------------------------------------------------------------------
    async def handle_create(self, request: web.Request) -> web.StreamResponse:
        """Run the gateway pipeline; an unknown ``previous_response_id`` is a 404 unless forwarded as is."""
        from higgs.server import keys

        gateway = request.app[keys.GATEWAY]
        forward = False
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError:
            body = None  # the pipeline reports malformed JSON in its own words
        if isinstance(body, dict) and isinstance(prev := body.get("previous_response_id"), str) and prev \
                and self.store.get(prev) is None and isinstance(body.get("model"), str):
            decision = await gateway.route(RouteQuery(model=body["model"], operation="chat"))
            first = gateway.providers.get(decision.providers[0])
            if first is None or first.local or first.upstream_format != self.name:
                raise _not_found(prev, "previous_response_id")
            forward = True
        token = _FORWARD_UNKNOWN_PREVIOUS.set(forward)
        try:
            return await gateway.run(request, self, "chat")
        finally:
            _FORWARD_UNKNOWN_PREVIOUS.reset(token)

    async def handle_get(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/responses/{id}``: a stored response."""
        rid = request.match_info["response_id"]
        entry = self.store.get(rid)
        if entry is None:
            raise _not_found(rid)
        return web.json_response(entry.response)

    async def handle_input_items(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/responses/{id}/input_items``: the stored request's input, paginated like OpenAI's list."""
        rid = request.match_info["response_id"]
        entry = self.store.get(rid)
        if entry is None:
            raise _not_found(rid)
        query = request.query
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequestError("'order' must be 'asc' or 'desc'.", param="order")
        try:
            limit = int(query.get("limit", "20"))
        except ValueError as err:
            raise InvalidRequestError("'limit' must be an integer.", param="limit") from err
        if not 1 <= limit <= 100:
            raise InvalidRequestError("'limit' must be between 1 and 100.", param="limit")
        items = entry.input_items if order == "asc" else entry.input_items[::-1]
        after = query.get("after")
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise InvalidRequestError(f"No input item with id '{after}'.", param="after")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return web.json_response({"object": "list", "data": page,
                                  "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None,
                                  "has_more": len(items) > limit})

    async def handle_delete(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /v1/responses/{id}``: forget a stored response."""
        rid = request.match_info["response_id"]
        if not self.store.delete(rid):
            raise _not_found(rid)
        return web.json_response({"id": rid, "object": "response", "deleted": True})

    # -- client side --------------------------------------------------------------------------------
    def parse_chat(self, body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
        """Parse a Responses request, prepending the stored conversation of ``previous_response_id``."""
        request = parse.parse_request(body)
        prev = body.get("previous_response_id")
        if prev is None:
            return request
        if not isinstance(prev, str) or not prev:
            raise InvalidRequestError("'previous_response_id' must be a string.", param="previous_response_id")
        entry = self.store.get(prev)
        if entry is None:
            if _FORWARD_UNKNOWN_PREVIOUS.get():
                return request
            raise _not_found(prev, "previous_response_id")
        tool_map = ToolMap()
        earlier_tools: list[Any] = []
        answer = parse.parse_input(entry.response.get("output") or [], tool_map, earlier_tools, [])
        history = [m.model_copy(deep=True) for m in entry.messages]
        merged: list[Message] = []
        for message in [*history, *answer, *request.messages]:
            if merged and merged[-1].role == message.role:
                merged[-1].content.extend(message.content)
            else:
                merged.append(message)
        instructions = 1 if isinstance(body.get("instructions"), str) and body.get("instructions") else 0
        system = request.system[:instructions] + list(entry.system) + request.system[instructions:]
        return request.model_copy(update={"messages": merged, "system": system})

    def _remember(self, request: ChatRequest, response: dict[str, Any]) -> None:
        if parse.echo_of(request).get("store") is False or response.get("status") == "failed":
            return
        instructions = parse.echo_of(request).get("instructions")
        skip = 1 if isinstance(instructions, str) and instructions else 0
        self.store.put(StoredResponse(response=response, system=list(request.system[skip:]),
                                      messages=[m.model_copy(deep=True) for m in request.messages],
                                      input_items=parse.stored_input_of(request)))

    def render_chat(self, response: ChatResponse, request: ChatRequest) -> dict[str, Any]:
        """A Responses object; stored unless the client sent ``store: false``."""
        rendered = render.render_response(response, request)
        self._remember(request, rendered)
        return rendered

    def render_chat_stream(self, events: AsyncIterator[StreamEvent], request: ChatRequest) -> AsyncIterator[bytes]:
        """Responses SSE events; the final response is stored like a non-streamed one."""
        return render.render_stream(events, request, lambda rendered: self._remember(request, rendered))

    def render_models(self, models: list[ModelInfo]) -> dict[str, Any]:
        """OpenAI's model list shape (the Responses API shares ``/v1/models``)."""
        return {"object": "list", "data": [{"id": m.id, "object": "model", "created": m.created,
                                            "owned_by": m.owned_by} for m in models]}

    def render_count_tokens(self, count: int) -> dict[str, Any]:
        """``POST /v1/responses/input_tokens``: ``{"object": "response.input_tokens", "input_tokens": N}``."""
        return {"object": "response.input_tokens", "input_tokens": count}

    def render_error(self, error: ErrorInfo) -> tuple[int, dict[str, Any]]:
        """``{"error": {...}}`` as OpenAI sends it."""
        return error.status, {"error": render.error_object(error)}

    def stream_error_bytes(self, error: ErrorInfo) -> bytes:
        """An ``error`` event as the Responses API streams it (the sequence number is unknown mid-relay)."""
        obj = render.error_object(error)
        data = {"type": "error", "code": obj["code"], "message": obj["message"], "param": obj["param"],
                "sequence_number": 0}
        return b"event: error\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    def usage_scan(self, operation: Operation) -> UsageScan:
        """Usage is the response's ``usage`` (in ``response.completed`` when streamed; ``null`` before it)."""
        return _USAGE_SCAN

    # -- upstream side ------------------------------------------------------------------------------
    def build_upstream_chat(self, request: ChatRequest, *, default_max_tokens: int | None = None) -> UpstreamCall:
        """A stateless ``POST /v1/responses`` for an upstream that speaks Responses."""
        body = upstream.build_request(request)
        headers = {"accept": "text/event-stream"} if request.stream else {}
        return UpstreamCall(path=PATH, body=body, headers=headers)

    def parse_upstream_chat(self, body: dict[str, Any]) -> ChatResponse:
        """A canonical response for an upstream Responses object."""
        return upstream.parse_response(body)

    def parse_upstream_chat_stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[StreamEvent]:
        """Canonical events for an upstream Responses stream."""
        return upstream.parse_stream(chunks)

    def parse_upstream_error(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> ErrorInfo:
        """An ``ErrorInfo`` for an upstream Responses error."""
        return upstream.parse_error(status, body, headers)


def _read_usage(event: dict[str, Any], usage: Usage) -> Usage:
    response = event.get("response")
    raw = response.get("usage") if isinstance(response, dict) else event.get("usage")
    return upstream.parse_usage(raw) if isinstance(raw, dict) else usage


_USAGE_SCAN = UsageScan(marker=b'"input_tokens"', read=_read_usage)
