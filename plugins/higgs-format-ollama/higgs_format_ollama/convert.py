"""Ollama's native JSON <-> the canonical model: ``/api/chat`` and ``/api/generate`` requests and answers.

Ollama streams NDJSON: one JSON object per line, ``"done": false`` while generating and a final
``"done": true`` line with ``done_reason`` and the token counts and durations (nanoseconds). Errors are
``{"error": "message"}`` (a line of their own in a stream).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

from higgs.errors import InvalidRequestError
from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    CompletionRequest,
    CompletionResponse,
    ContentBlock,
    ImageBlock,
    Message,
    Reasoning,
    ResponseFormat,
    Sampling,
    StreamError,
    StreamEvent,
    StreamFinish,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    Tool,
    ToolArgsDelta,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
)

log = logging.getLogger("higgs.formats.ollama")

FORMAT_NAME = "ollama"
_DONE_REASONS = {"end_turn": "stop", "tool_use": "stop", "stop_sequence": "stop", "max_tokens": "length",
                 "refusal": "stop", "pause_turn": "stop", None: "stop"}
_IMAGE_MAGIC = {"iVBORw0KGgo": "image/png", "/9j/": "image/jpeg", "R0lGOD": "image/gif", "UklGR": "image/webp"}
_KNOWN_CHAT = frozenset({"model", "messages", "tools", "format", "options", "stream", "think", "keep_alive"})
_KNOWN_GENERATE = frozenset({"model", "prompt", "suffix", "system", "template", "raw", "images", "format", "options",
                             "stream", "think", "keep_alive", "context"})


def now_iso() -> str:
    """Ollama's ``created_at``: RFC 3339 in UTC."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def model_name(body: Mapping[str, Any]) -> str:
    """The requested model; Ollama's implicit ``:latest`` tag is dropped so higgs names and aliases match."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model is required", param="model")
    return model.removesuffix(":latest")


def media_type(data: str) -> str:
    """The image type of base64 ``data``, sniffed from its first bytes (Ollama sends bare base64)."""
    return next((mime for magic, mime in _IMAGE_MAGIC.items() if data.startswith(magic)), "image/png")


def _images(raw: Any, where: str) -> list[ContentBlock]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
        raise InvalidRequestError(f"{where} must be an array of base64 strings", param=where)
    blocks: list[ContentBlock] = []
    for image in raw:
        if image.startswith("data:"):
            image = image.partition(",")[2]
        blocks.append(ImageBlock(media_type=media_type(image), data=image))
    return blocks


def _options(body: Mapping[str, Any]) -> tuple[Sampling, int | None, list[str]]:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidRequestError("options must be an object", param="options")

    def number(key: str) -> float | None:
        value = options.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequestError(f"options.{key} must be a number", param=f"options.{key}")
        return float(value)

    def integer(key: str) -> int | None:
        value = number(key)
        if value is not None and not float(value).is_integer():
            raise InvalidRequestError(f"options.{key} must be an integer", param=f"options.{key}")
        return int(value) if value is not None else None

    sampling = Sampling(temperature=number("temperature"), top_p=number("top_p"), top_k=integer("top_k"),
                        min_p=number("min_p"), seed=integer("seed"), presence_penalty=number("presence_penalty"),
                        frequency_penalty=number("frequency_penalty"), repetition_penalty=number("repeat_penalty"))
    num_predict = integer("num_predict")
    max_tokens = num_predict if num_predict is not None and num_predict > 0 else None  # -1/-2: no limit
    stop = options.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequestError("options.stop must be an array of strings", param="options.stop")
    return sampling, max_tokens, stop


def _format(raw: Any) -> ResponseFormat | None:
    if raw is None or raw == "":
        return None
    if raw == "json":
        return ResponseFormat(type="json_object")
    if isinstance(raw, dict):
        return ResponseFormat(type="json_schema", json_schema=raw, name="response")
    raise InvalidRequestError('format must be "json" or a JSON schema object', param="format")


def _think(raw: Any) -> Reasoning | None:
    if raw is None:
        return None
    if isinstance(raw, bool):
        return Reasoning(enabled=raw)
    if raw in ("low", "medium", "high"):
        return Reasoning(enabled=True, effort=raw)
    raise InvalidRequestError('think must be a boolean or "low", "medium", "high"', param="think")


def _stream(body: Mapping[str, Any]) -> bool:
    stream = body.get("stream", True)  # Ollama streams unless told not to
    if not isinstance(stream, bool):
        raise InvalidRequestError("stream must be a boolean", param="stream")
    return stream


def _tools(raw: Any) -> list[Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequestError("tools must be an array", param="tools")
    tools = []
    for i, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequestError(f"tools[{i}].function.name is required", param=f"tools[{i}].function.name")
        params = function.get("parameters") or {"type": "object", "properties": {}}
        tools.append(Tool(name=function["name"], description=function.get("description"), input_schema=params))
    return tools


def _tool_calls(raw: Any, where: str, turn: int) -> list[ToolUseBlock]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequestError(f"{where} must be an array", param=where)
    calls = []
    for i, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequestError(f"{where}[{i}].function.name is required", param=f"{where}[{i}].function")
        args = function.get("arguments") or {}
        if isinstance(args, str):  # some clients send the OpenAI-style JSON string
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError as err:
                raise InvalidRequestError(f"{where}[{i}].function.arguments is not valid JSON",
                                          param=f"{where}[{i}].function.arguments") from err
        if not isinstance(args, dict):
            raise InvalidRequestError(f"{where}[{i}].function.arguments must be an object",
                                      param=f"{where}[{i}].function.arguments")
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else f"call_{turn}_{i}"
        calls.append(ToolUseBlock(id=call_id, name=function["name"], input=args))
    return calls


def parse_messages(raw: Any) -> tuple[list[TextBlock], list[Message]]:
    """System text and canonical turns for Ollama ``messages``.

    Ollama tool results name the tool (``tool_name``), not the call; each is matched to the earliest
    unanswered call of that tool (else the earliest unanswered call), so other formats get valid ids.
    """
    if not isinstance(raw, list):
        raise InvalidRequestError("messages must be an array", param="messages")
    system: list[TextBlock] = []
    messages: list[Message] = []
    pending: list[ToolUseBlock] = []

    def add(role: str, blocks: list[ContentBlock]) -> None:
        if not blocks:
            return
        if messages and messages[-1].role == role:
            messages[-1].content.extend(blocks)
        else:
            messages.append(Message(role=role, content=blocks))

    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequestError(f"{where} must be an object", param=where)
        role, content = message.get("role"), message.get("content") or ""
        if not isinstance(content, str):
            raise InvalidRequestError(f"{where}.content must be a string", param=f"{where}.content")
        if role == "system":
            if content:
                system.append(TextBlock(text=content))
        elif role == "user":
            add("user", [*_images(message.get("images"), f"{where}.images"),
                         *([TextBlock(text=content)] if content else [])])
        elif role == "assistant":
            blocks: list[ContentBlock] = []
            if isinstance(message.get("thinking"), str) and message["thinking"]:
                blocks.append(ThinkingBlock(thinking=message["thinking"]))
            if content:
                blocks.append(TextBlock(text=content))
            calls = _tool_calls(message.get("tool_calls"), f"{where}.tool_calls", i)
            pending.extend(calls)
            add("assistant", blocks + list(calls))
        elif role == "tool":
            name = message.get("tool_name") or message.get("name")
            wanted = message.get("tool_call_id")
            match = next((c for c in pending if c.id == wanted), None) or \
                next((c for c in pending if c.name == name), None) or (pending[0] if pending else None)
            if match is None:
                label = f" ({name})" if isinstance(name, str) else ""
                add("user", [TextBlock(text=f"Tool result{label}: {content}")])
                continue
            pending.remove(match)
            add("user", [ToolResultBlock(tool_use_id=match.id, content=[TextBlock(text=content)])])
        else:
            raise InvalidRequestError(f"{where}.role must be system, user, assistant or tool", param=f"{where}.role")
    return system, messages


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    """A canonical chat request for an ``/api/chat`` body."""
    model = model_name(body)
    system, messages = parse_messages(body.get("messages", []))
    sampling, max_tokens, stop = _options(body)
    return ChatRequest(model=model, system=system, messages=messages, tools=_tools(body.get("tools")),
                       max_tokens=max_tokens, stop=stop, sampling=sampling, response_format=_format(body.get("format")),
                       reasoning=_think(body.get("think")), stream=_stream(body), include_usage=True,
                       extra={k: v for k, v in body.items() if k not in _KNOWN_CHAT}, source_format=FORMAT_NAME)


def parse_generate(body: dict[str, Any]) -> ChatRequest:
    """A canonical chat request for a templated ``/api/generate`` body (prompt as the user turn)."""
    model = model_name(body)
    prompt = body.get("prompt") or ""
    system = body.get("system") or ""
    if not isinstance(prompt, str) or not isinstance(system, str):
        raise InvalidRequestError("prompt and system must be strings", param="prompt")
    if body.get("suffix"):
        log.debug("ignoring generate suffix: fill-in-the-middle is not supported")
    content: list[ContentBlock] = [*_images(body.get("images"), "images"), TextBlock(text=prompt)]
    sampling, max_tokens, stop = _options(body)
    return ChatRequest(model=model, system=[TextBlock(text=system)] if system else [],
                       messages=[Message(role="user", content=content)], max_tokens=max_tokens, stop=stop,
                       sampling=sampling, response_format=_format(body.get("format")),
                       reasoning=_think(body.get("think")), stream=_stream(body), include_usage=True,
                       extra={k: v for k, v in body.items() if k not in _KNOWN_GENERATE}, source_format=FORMAT_NAME)


def parse_raw_generate(body: dict[str, Any]) -> CompletionRequest:
    """A canonical text completion for ``/api/generate`` with ``raw: true`` (no chat template)."""
    model = model_name(body)
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise InvalidRequestError("prompt must be a string", param="prompt")
    sampling, max_tokens, stop = _options(body)
    return CompletionRequest(model=model, prompt=[prompt], max_tokens=max_tokens, stop=stop, sampling=sampling,
                             stream=_stream(body), include_usage=True)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def counts(usage: Usage, total_ns: int, eval_ns: int) -> dict[str, Any]:
    """The final line's token counts and durations."""
    return {"total_duration": total_ns, "load_duration": 0, "prompt_eval_count": usage.input_tokens,
            "prompt_eval_duration": max(total_ns - eval_ns, 0), "eval_count": usage.output_tokens,
            "eval_duration": eval_ns}


def tool_call(block: ToolUseBlock, index: int) -> dict[str, Any]:
    """An Ollama ``tool_calls`` entry (arguments are an object, not a JSON string)."""
    return {"id": block.id, "function": {"index": index, "name": block.name, "arguments": block.input}}


def assistant_message(blocks: list[ContentBlock]) -> dict[str, Any]:
    """The ``message`` of a chat answer."""
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(b.text for b in blocks if isinstance(b, TextBlock))}
    thinking = "".join(b.thinking for b in blocks if isinstance(b, ThinkingBlock))
    if thinking:
        message["thinking"] = thinking
    calls = [b for b in blocks if isinstance(b, ToolUseBlock)]
    if calls:
        message["tool_calls"] = [tool_call(c, i) for i, c in enumerate(calls)]
    return message


def render_chat(response: ChatResponse, request: ChatRequest, generate: bool = False) -> dict[str, Any]:
    """A full ``/api/chat`` (or ``/api/generate``) answer."""
    body: dict[str, Any] = {"model": request.model, "created_at": now_iso()}
    message = assistant_message(response.content)
    if generate:
        body["response"] = message["content"]
        if "thinking" in message:
            body["thinking"] = message["thinking"]
    else:
        body["message"] = message
    body.update({"done": True, "done_reason": _DONE_REASONS.get(response.stop_reason, "stop")})
    body.update(counts(response.usage, 0, 0))
    return body


def render_completion(response: CompletionResponse, request: CompletionRequest) -> dict[str, Any]:
    """A full raw ``/api/generate`` answer."""
    choice = response.choices[0] if response.choices else None
    return {"model": request.model, "created_at": now_iso(), "response": choice.text if choice else "",
            "done": True, "done_reason": _DONE_REASONS.get(choice.stop_reason if choice else None, "stop"),
            **counts(response.usage, 0, 0)}


def line(payload: dict[str, Any]) -> bytes:
    """One NDJSON line."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


async def render_stream(events: AsyncIterator[StreamEvent], model: str, generate: bool = False) -> AsyncIterator[bytes]:
    """Canonical events as Ollama NDJSON lines: text/thinking per delta, tool calls whole when complete."""
    started = time.perf_counter_ns()
    first: int | None = None
    tools: dict[int, tuple[ToolUseBlock, list[str]]] = {}
    calls = 0

    def chunk(**fields: Any) -> bytes:
        if generate:
            body = {"model": model, "created_at": now_iso(), "response": fields.get("content", ""), "done": False}
            if "thinking" in fields:
                body["thinking"] = fields["thinking"]
            return line(body)
        message = {"role": "assistant", "content": "", **fields}
        return line({"model": model, "created_at": now_iso(), "message": message, "done": False})

    async for event in events:
        if isinstance(event, BlockStart):
            if isinstance(event.block, ToolUseBlock):
                tools[event.index] = (event.block, [])
        elif isinstance(event, BlockDelta):
            first = first or time.perf_counter_ns()
            delta = event.delta
            if isinstance(delta, TextDelta) and delta.text:
                yield chunk(content=delta.text)
            elif isinstance(delta, ThinkingDelta) and delta.thinking:
                yield chunk(thinking=delta.thinking)
            elif isinstance(delta, ToolArgsDelta) and event.index in tools:
                tools[event.index][1].append(delta.partial_json)
        elif isinstance(event, BlockStop) and event.index in tools:
            block, parts = tools.pop(event.index)
            text = "".join(parts)
            try:
                args = json.loads(text) if text.strip() else {}
            except ValueError:
                args = {}
            call = block.model_copy(update={"input": args if isinstance(args, dict) else {}})
            if not generate:
                yield chunk(tool_calls=[tool_call(call, calls)])
            calls += 1
        elif isinstance(event, StreamFinish):
            end = time.perf_counter_ns()
            final: dict[str, Any] = {"model": model, "created_at": now_iso()}
            if generate:
                final["response"] = ""
            else:
                final["message"] = {"role": "assistant", "content": ""}
            final.update({"done": True, "done_reason": _DONE_REASONS.get(event.stop_reason, "stop")})
            final.update(counts(event.usage, end - started, end - (first or end)))
            yield line(final)
            return
        elif isinstance(event, StreamError):
            yield line({"error": event.error.message})
            return
    yield line({"error": "the stream ended before the answer completed"})
