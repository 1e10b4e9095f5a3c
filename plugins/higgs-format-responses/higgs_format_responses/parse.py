"""Client side: a ``POST /v1/responses`` body -> a canonical ``ChatRequest``.

Input items fold into canonical turns: consecutive assistant-side items (messages, ``function_call``,
``custom_tool_call``, ``reasoning``) become one assistant message, tool outputs and user messages one user
message. ``system`` and ``developer`` messages (Codex sends its whole system prompt that way) join the
canonical system text, after ``instructions``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from higgs.errors import InvalidRequestError
from higgs.messages import (
    ChatRequest,
    ContentBlock,
    ImageBlock,
    Message,
    Reasoning,
    ResponseFormat,
    Sampling,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    new_id,
)
from higgs_format_responses.tools import ToolMap, flat_name, log, parse_tool_choice, parse_tools

FORMAT_NAME = "responses"
#: Key in ``ChatRequest.extra`` for what rendering needs to know about the client's request. Builders
#: forward ``extra`` only to the same format, and this format's builder skips ``_``-prefixed keys.
STATE_KEY = "_responses"

#: Fields this parser understands; the rest of the body lands in ``ChatRequest.extra``.
_KNOWN = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "max_output_tokens",
    "temperature", "top_p", "top_logprobs", "text", "reasoning", "stream", "store", "previous_response_id",
    "metadata", "user", "stream_options",
})
_EFFORTS = {"none": None, "minimal": "minimal", "low": "low", "medium": "medium", "high": "high", "xhigh": "high",
            "max": "high"}
_ASSISTANT_ITEMS = frozenset({"function_call", "custom_tool_call", "reasoning"})
_TOOL_OUTPUTS = frozenset({"function_call_output", "custom_tool_call_output"})
#: Records of tools only OpenAI runs: no other model can use them, so they are skipped (debug log).
_HOSTED_ITEMS = frozenset({"web_search_call", "file_search_call", "image_generation_call", "code_interpreter_call",
                           "mcp_list_tools", "mcp_call", "mcp_approval_request", "mcp_approval_response",
                           "tool_search_call", "tool_search_output"})


def _number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"'{key}' must be a number.", param=key)
    return float(value)


def _int(body: Mapping[str, Any], key: str, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequestError(f"'{key}' must be an integer >= {minimum}.", param=key)
    return value


def _image(part: dict[str, Any], where: str) -> ImageBlock:
    url = part.get("image_url")
    detail = part.get("detail") if isinstance(part.get("detail"), str) else None
    if isinstance(url, dict):  # tolerate the Chat Completions shape
        url = url.get("url")
    if not isinstance(url, str) or not url:
        if part.get("file_id"):
            raise InvalidRequestError("Images by 'file_id' need OpenAI's file store; send 'image_url' instead.",
                                      param=f"{where}.file_id")
        raise InvalidRequestError(f"'{where}.image_url' is required.", param=f"{where}.image_url")
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if ";base64" not in head or not data:
            raise InvalidRequestError("Image data URLs must be base64 encoded.", param=f"{where}.image_url")
        return ImageBlock(media_type=head[5:].split(";")[0] or "image/png", data=data, detail=detail)
    return ImageBlock(url=url, detail=detail)


def _content(raw: Any, where: str) -> list[ContentBlock]:
    """Message content (a string or parts) as canonical blocks."""
    if isinstance(raw, str):
        return [TextBlock(text=raw)] if raw else []
    if not isinstance(raw, list):
        raise InvalidRequestError(f"'{where}' must be a string or an array of content parts.", param=where)
    blocks: list[ContentBlock] = []
    for i, part in enumerate(raw):
        here = f"{where}[{i}]"
        if not isinstance(part, dict):
            raise InvalidRequestError(f"'{here}' must be an object.", param=here)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequestError(f"'{here}.text' must be a string.", param=f"{here}.text")
            blocks.append(TextBlock(text=text))
        elif kind == "refusal":
            blocks.append(TextBlock(text=str(part.get("refusal", ""))))
        elif kind == "input_image":
            blocks.append(_image(part, here))
        elif kind == "input_file":
            raise InvalidRequestError("'input_file' parts are not supported by higgs.", param=f"{here}.type")
        else:
            raise InvalidRequestError(f"Unknown content part type '{kind}'.", param=f"{here}.type")
    return blocks


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        raise InvalidRequestError(f"'{where}' must be a JSON string.", param=where)
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as err:
        raise InvalidRequestError(f"'{where}' is not valid JSON.", param=where) from err
    if not isinstance(value, dict):
        raise InvalidRequestError(f"'{where}' must encode a JSON object.", param=where)
    return value


def _tool_output(raw: Any, where: str) -> list[TextBlock | ImageBlock]:
    if isinstance(raw, str):
        return [TextBlock(text=raw)]
    out: list[TextBlock | ImageBlock] = []
    for block in _content(raw, where):
        if isinstance(block, TextBlock | ImageBlock):
            out.append(block)
    return out


class _Turns:
    """Accumulates canonical messages, merging consecutive items of the same role."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def add(self, role: str, blocks: list[ContentBlock]) -> None:
        if not blocks:
            return
        if self.messages and self.messages[-1].role == role:
            self.messages[-1].content.extend(blocks)
        else:
            self.messages.append(Message(role=role, content=blocks))


def _reasoning_block(item: dict[str, Any]) -> ThinkingBlock | None:
    def parts(key: str) -> list[Any]:
        value = item.get(key)
        return [p.get("text", "") for p in value if isinstance(p, dict)] if isinstance(value, list) else []

    texts = parts("content") or parts("summary")
    text = "\n\n".join(t for t in texts if isinstance(t, str) and t)
    if not text:
        return None  # an encrypted-only reasoning item means nothing to another vendor's model
    return ThinkingBlock(thinking=text)


def parse_input(raw: Any, tool_map: ToolMap, tools: list[Any], system: list[TextBlock]) -> list[Message]:
    """Canonical messages for ``input``; ``additional_tools`` items add to ``tools``, developer text to ``system``."""
    turns = _Turns()
    if isinstance(raw, str):
        turns.add("user", [TextBlock(text=raw)])
        return turns.messages
    if not isinstance(raw, list):
        raise InvalidRequestError("'input' must be a string or an array of input items.", param="input")
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequestError(f"'{where}' must be an object.", param=where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if not isinstance(kind, str):
            raise InvalidRequestError(f"'{where}.type' must be a string.", param=f"{where}.type")
        if kind == "message":
            role = item.get("role")
            blocks = _content(item.get("content"), f"{where}.content")
            if role in ("system", "developer"):
                system.extend(b for b in blocks if isinstance(b, TextBlock))
            elif role in ("user", "assistant"):
                turns.add(role, blocks)
            else:
                raise InvalidRequestError(f"'{where}.role' must be user, assistant, system or developer.",
                                          param=f"{where}.role")
        elif kind == "additional_tools":
            parse_tools(item.get("tools"), f"{where}.tools", tools, tool_map)
        elif kind in ("function_call", "custom_tool_call"):
            name, call_id = item.get("name"), item.get("call_id")
            if not isinstance(name, str) or not isinstance(call_id, str):
                raise InvalidRequestError(f"'{where}' needs string 'name' and 'call_id'.", param=where)
            namespace = item.get("namespace") if isinstance(item.get("namespace"), str) else None
            if kind == "function_call":
                args = _arguments(item.get("arguments", ""), f"{where}.arguments")
            else:
                args = {"input": str(item.get("input", ""))}
            turns.add("assistant", [ToolUseBlock(id=call_id, name=flat_name(namespace, name), input=args)])
        elif kind in _TOOL_OUTPUTS:
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise InvalidRequestError(f"'{where}.call_id' must be a string.", param=f"{where}.call_id")
            output = _tool_output(item.get("output", ""), f"{where}.output")
            turns.add("user", [ToolResultBlock(tool_use_id=call_id, content=output)])
        elif kind == "reasoning":
            block = _reasoning_block(item)
            if block is not None:
                turns.add("assistant", [block])
        elif kind in _HOSTED_ITEMS:
            log.debug("skipping %s input item: a hosted-tool record", kind)
        elif kind == "item_reference":
            raise InvalidRequestError("'item_reference' input items are not supported; send the items themselves.",
                                      param=f"{where}.type")
        else:
            raise InvalidRequestError(f"Input item type '{kind}' is not supported.", param=f"{where}.type")
    return turns.messages


def _response_format(text: Any) -> ResponseFormat | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise InvalidRequestError("'text' must be an object.", param="text")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise InvalidRequestError("'text.format' must be an object.", param="text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat(type="json_object")
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequestError("'text.format.schema' must be a JSON schema object.",
                                      param="text.format.schema")
        strict = fmt.get("strict") if isinstance(fmt.get("strict"), bool) else None
        name = fmt.get("name") if isinstance(fmt.get("name"), str) else None
        return ResponseFormat(type="json_schema", json_schema=schema, name=name, strict=strict)
    raise InvalidRequestError("'text.format.type' must be text, json_object or json_schema.",
                              param="text.format.type")


def _reasoning(raw: Any) -> Reasoning | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequestError("'reasoning' must be an object.", param="reasoning")
    effort = raw.get("effort")
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in _EFFORTS:
        raise InvalidRequestError(f"'reasoning.effort' must be one of {', '.join(_EFFORTS)}.",
                                  param="reasoning.effort")
    if effort == "none":
        return Reasoning(enabled=False)
    return Reasoning(enabled=True, effort=_EFFORTS[effort])


def parse_request(body: dict[str, Any]) -> ChatRequest:
    """Parse a Responses request body (``previous_response_id`` is resolved by the caller)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' is required.", param="model")
    if "input" not in body and not body.get("previous_response_id"):
        raise InvalidRequestError("'input' is required.", param="input")
    tool_map = ToolMap()
    tools: list[Any] = []
    system: list[TextBlock] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            system.append(TextBlock(text=instructions))
    elif isinstance(instructions, list):
        parse_input(instructions, tool_map, tools, system)
    elif instructions is not None:
        raise InvalidRequestError("'instructions' must be a string.", param="instructions")
    parse_tools(body.get("tools"), "tools", tools, tool_map)
    messages = parse_input(body.get("input", []), tool_map, tools, system)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequestError("'stream' must be a boolean.", param="stream")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InvalidRequestError("'metadata' must be an object.", param="metadata")
    user = body.get("user")
    # client_metadata, include, prompt_cache_key, service_tier, ...: meaningful to a Responses upstream only.
    extra = {k: v for k, v in body.items() if k not in _KNOWN}
    extra[STATE_KEY] = {
        "input": input_items(body.get("input")) if body.get("store") is not False else [],
        "tools": tool_map.dump(),
        "echo": {k: body[k] for k in ("instructions", "tools", "tool_choice", "text", "reasoning", "store",
                                      "previous_response_id", "parallel_tool_calls", "max_output_tokens",
                                      "temperature", "top_p", "metadata", "user", "truncation")
                 if k in body},
    }
    tool_choice = parse_tool_choice(body.get("tool_choice"), tool_map, body.get("parallel_tool_calls"))
    if not tools:
        tool_choice = None  # e.g. only hosted tools were offered: upstreams refuse a choice without tools
    return ChatRequest(
        model=model,
        system=system,
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        max_tokens=_int(body, "max_output_tokens", 1),
        sampling=Sampling(temperature=_number(body, "temperature"), top_p=_number(body, "top_p"),
                          top_logprobs=_int(body, "top_logprobs", 0)),
        response_format=_response_format(body.get("text")),
        reasoning=_reasoning(body.get("reasoning")),
        stream=stream,
        user=user if isinstance(user, str) else None,
        metadata=metadata,
        extra=extra,
        source_format=FORMAT_NAME,
    )


def input_items(raw: Any) -> list[dict[str, Any]]:
    """The request's input as stored items, each with an ``id`` (for ``GET .../input_items``)."""
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}] \
        if isinstance(raw, str) else [dict(i) for i in raw or [] if isinstance(i, dict)]
    for item in items:
        item.setdefault("type", "message")
        if not isinstance(item.get("id"), str):
            item["id"] = new_id("msg" if item["type"] == "message" else "item")
        if item["type"] == "message" and isinstance(item.get("content"), str):
            item["content"] = [{"type": "input_text", "text": item["content"]}]
        if item["type"] == "message":
            item.setdefault("status", "completed")
    return items


def stored_input_of(request: ChatRequest) -> list[dict[str, Any]]:
    """The input items recorded at parse time."""
    state = request.extra.get(STATE_KEY)
    items = state.get("input") if isinstance(state, dict) else None
    return items if isinstance(items, list) else []


def tool_map_of(request: ChatRequest) -> ToolMap:
    """The client's tool names recorded at parse time (empty for requests parsed elsewhere)."""
    state = request.extra.get(STATE_KEY)
    return ToolMap.load(state.get("tools") if isinstance(state, dict) else None)


def echo_of(request: ChatRequest) -> dict[str, Any]:
    """The request fields a Responses object echoes back."""
    state = request.extra.get(STATE_KEY)
    echo = state.get("echo") if isinstance(state, dict) else None
    return echo if isinstance(echo, dict) else {}
