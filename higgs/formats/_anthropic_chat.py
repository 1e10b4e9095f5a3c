"""Anthropic Messages: request parse/build and response render/parse (non-streamed)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from higgs.errors import InvalidRequestError
from higgs.formats._common import (
    anthropic_tool_id,
    dropped,
    expect_dict,
    expect_list,
    expect_str,
    log,
    opt_bool,
    opt_dict,
    opt_int,
    opt_number,
    opt_str,
)
from higgs.messages import (
    ChatRequest,
    ChatResponse,
    ContentBlock,
    ImageBlock,
    Message,
    Reasoning,
    ResponseFormat,
    Sampling,
    StopReason,
    TextBlock,
    ThinkingBlock,
    Tool,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
    UnknownBlock,
    Usage,
    new_id,
)

NAME = "anthropic"
API_VERSION = "2023-06-01"
#: ``max_tokens`` when neither the client nor the provider gave one (Anthropic requires the field).
FALLBACK_MAX_TOKENS = 4096
MIN_THINKING_BUDGET = 1024
#: Opens a translated conversation that starts with an assistant turn (Anthropic requires a user turn first).
PLACEHOLDER_TURN = "."

KNOWN_FIELDS = frozenset({
    "model", "messages", "system", "max_tokens", "tools", "tool_choice", "stop_sequences", "temperature", "top_p",
    "top_k", "thinking", "metadata", "stream",
})
# Fields ``/v1/messages/count_tokens`` accepts (the rest of a messages body is rejected there).
COUNT_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers",
                          "cache_control", "output_config", "speed", "user_profile_id", "workspace_id"})
STOP_REASONS: frozenset[str] = frozenset(
    {"end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal", "pause_turn"})
EFFORT_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384}
# Claude models that accept extended thinking (a translated request never sends it to others).
_THINKING_MODEL = re.compile(r"claude-(?:3-7|opus-4|sonnet-4|haiku-4|\w+-4)", re.I)
_STRUCTURED_MODEL = re.compile(r"claude-(?:opus-4-1|(?:opus|sonnet|haiku)-4-[5-9]|(?:opus|sonnet|haiku)-[5-9])", re.I)


# --------------------------------------------------------------------------------------------------
# Client request -> canonical
# --------------------------------------------------------------------------------------------------


def parse_request(body: Mapping[str, Any], *, count_only: bool = False) -> ChatRequest:
    """Parse a ``/v1/messages`` body (``count_only``: a count_tokens body, no ``max_tokens``)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model: Field required (a string).", param="model")
    max_tokens = opt_int(body, "max_tokens", minimum=1)
    if max_tokens is None and not count_only:
        raise InvalidRequestError("max_tokens: Field required", param="max_tokens")
    raw_messages = expect_list(body.get("messages"), "messages")
    system = _parse_system(body.get("system"))
    messages: list[Message] = []
    for i, raw in enumerate(raw_messages):
        where = f"messages.{i}"
        msg = expect_dict(raw, where)
        role = msg.get("role")
        content = _parse_content(msg.get("content"), where)
        if role == "system":  # recent Claude Code sends these: they belong with the system prompt
            system.extend(b for b in content if isinstance(b, TextBlock) and b.text)
        elif role in ("user", "assistant"):
            messages.append(Message(role=role, content=content))
        else:
            raise InvalidRequestError(f"{where}.role: Input should be 'user' or 'assistant'", param=f"{where}.role")
    metadata = expect_dict(body.get("metadata") or {}, "metadata")
    user = metadata.get("user_id")
    return ChatRequest(
        model=model,
        system=system,
        messages=messages,
        tools=_parse_tools(body.get("tools")),
        tool_choice=_parse_tool_choice(body.get("tool_choice")),
        max_tokens=max_tokens,
        stop=_parse_stops(body.get("stop_sequences")),
        sampling=Sampling(temperature=opt_number(body, "temperature"), top_p=opt_number(body, "top_p"),
                          top_k=opt_int(body, "top_k")),
        reasoning=_parse_reasoning(body.get("thinking"), body.get("output_config")),
        response_format=_parse_output_format(body.get("output_config")),
        stream=opt_bool(body, "stream"),
        user=user if isinstance(user, str) else None,
        metadata=metadata,
        extra={k: v for k, v in body.items() if k not in KNOWN_FIELDS or (k == "thinking" and _unusual(v))},
        source_format=NAME,
    )


def _parse_system(value: Any) -> list[TextBlock]:
    if value is None:
        return []
    if isinstance(value, str):
        return [TextBlock(text=value)] if value else []
    blocks = []
    for i, raw in enumerate(expect_list(value, "system")):
        block = expect_dict(raw, f"system.{i}")
        if block.get("type") != "text":
            log.debug("skipping a %r block in system", block.get("type"))
            continue
        blocks.append(TextBlock(text=expect_str(block.get("text"), f"system.{i}.text"),
                                cache_control=opt_dict(block.get("cache_control"), f"system.{i}.cache_control")))
    return blocks


def _parse_content(value: Any, where: str) -> list[ContentBlock]:
    if value is None:
        return []
    if isinstance(value, str):
        return [TextBlock(text=value)]
    return [_parse_block(expect_dict(raw, f"{where}.content.{j}"), f"{where}.content.{j}")
            for j, raw in enumerate(expect_list(value, f"{where}.content"))]


def _parse_image(block: dict[str, Any], where: str) -> ImageBlock | UnknownBlock:
    source = expect_dict(block.get("source"), f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        return ImageBlock(media_type=opt_str(source.get("media_type"), f"{where}.source.media_type"),
                          data=expect_str(source.get("data"), f"{where}.source.data"))
    if kind == "url":
        return ImageBlock(url=expect_str(source.get("url"), f"{where}.source.url"))
    return UnknownBlock(type="image", raw=block)  # file ids and future sources: pass-through only


def _parse_block(block: dict[str, Any], where: str) -> ContentBlock:
    kind = block.get("type")
    if kind == "text":
        return TextBlock(text=expect_str(block.get("text"), f"{where}.text"),
                         cache_control=opt_dict(block.get("cache_control"), f"{where}.cache_control"))
    if kind == "image":
        return _parse_image(block, where)
    if kind == "tool_use":
        tool_input = block.get("input")
        return ToolUseBlock(id=expect_str(block.get("id"), f"{where}.id"),
                            name=expect_str(block.get("name"), f"{where}.name"),
                            input=expect_dict(tool_input, f"{where}.input") if tool_input is not None else {})
    if kind == "tool_result":
        return ToolResultBlock(tool_use_id=expect_str(block.get("tool_use_id"), f"{where}.tool_use_id"),
                               content=_parse_result_content(block.get("content"), where),
                               is_error=bool(block.get("is_error")))
    if kind == "thinking":
        signature = block.get("signature")
        return ThinkingBlock(thinking=str(block.get("thinking") or ""),
                             signature=signature if isinstance(signature, str) else None)
    if kind == "redacted_thinking":
        return ThinkingBlock(redacted=True, data=str(block.get("data") or ""))
    if not isinstance(kind, str):
        raise InvalidRequestError(f"{where}.type: Field required", param=f"{where}.type")
    log.debug("keeping unknown Anthropic block %r", kind)
    return UnknownBlock(type=kind, raw=block)


def _parse_result_content(value: Any, where: str) -> list[TextBlock | ImageBlock]:
    if value is None:
        return []
    if isinstance(value, str):
        return [TextBlock(text=value)] if value else []
    out: list[TextBlock | ImageBlock] = []
    for j, raw in enumerate(expect_list(value, f"{where}.content")):
        block = _parse_block(expect_dict(raw, f"{where}.content.{j}"), f"{where}.content.{j}")
        if isinstance(block, TextBlock | ImageBlock):
            out.append(block)
        else:
            log.debug("skipping a %r block inside a tool_result", block.type)
    return out


def _parse_tools(value: Any) -> list[Tool]:
    tools = []
    for i, raw in enumerate(expect_list(value or [], "tools")):
        tool = expect_dict(raw, f"tools.{i}")
        schema = tool.get("input_schema")
        if schema is None and tool.get("type", "custom") == "custom":  # typed (server) tools carry no schema
            raise InvalidRequestError(f"'tools.{i}.input_schema' is required for custom tools.",
                                      param=f"tools.{i}.input_schema")
        tools.append(Tool(
            name=expect_str(tool.get("name"), f"tools.{i}.name"),
            description=tool.get("description") if isinstance(tool.get("description"), str) else None,
            input_schema=expect_dict(schema, f"tools.{i}.input_schema") if schema is not None else
            {"type": "object", "properties": {}},
            extra={k: v for k, v in tool.items() if k not in ("name", "description", "input_schema")},
        ))
    return tools


def _parse_tool_choice(value: Any) -> ToolChoice | None:
    if value is None:
        return None
    choice = expect_dict(value, "tool_choice")
    kind = choice.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        raise InvalidRequestError(f"tool_choice.type: invalid value {kind!r}", param="tool_choice.type")
    name = choice.get("name")
    if kind == "tool" and not isinstance(name, str):
        raise InvalidRequestError("tool_choice.name: Field required", param="tool_choice.name")
    return ToolChoice(type=kind, name=name if kind == "tool" else None,
                      disable_parallel_tool_use=bool(choice.get("disable_parallel_tool_use")))


def _parse_stops(value: Any) -> list[str]:
    stops = expect_list(value or [], "stop_sequences")
    if not all(isinstance(s, str) for s in stops):
        raise InvalidRequestError("stop_sequences: must be an array of strings", param="stop_sequences")
    return stops


def _parse_reasoning(value: Any, output_config: Any) -> Reasoning | None:
    """``thinking`` plus ``output_config.effort``. The raw ``thinking`` also stays in ``extra`` for pass-through."""
    effort = output_config.get("effort") if isinstance(output_config, dict) else None
    effort = {"xhigh": "high", "max": "high"}.get(effort, effort) if isinstance(effort, str) else None
    if value is None:
        return Reasoning(effort=effort) if effort in ("low", "medium", "high") else None
    thinking = expect_dict(value, "thinking")
    kind = thinking.get("type")
    if not isinstance(kind, str):
        raise InvalidRequestError("thinking.type: Field required", param="thinking.type")
    if kind == "disabled":
        return Reasoning(enabled=False)
    if kind == "enabled" and not isinstance(thinking.get("budget_tokens"), int):
        raise InvalidRequestError("thinking.budget_tokens: Field required", param="thinking.budget_tokens")
    # enabled, adaptive, between_tools and later modes all mean "think"
    return Reasoning(enabled=True, budget_tokens=opt_int(thinking, "budget_tokens", prefix="thinking."),
                     effort=effort if effort in ("low", "medium", "high") else None)


def _unusual(thinking: Any) -> bool:
    """A thinking config the canonical ``Reasoning`` cannot restate (adaptive, display options, ...)."""
    if not isinstance(thinking, dict):
        return False
    plain = thinking.get("type") == "disabled" and set(thinking) == {"type"}
    return not plain and not (thinking.get("type") == "enabled" and set(thinking) == {"type", "budget_tokens"})


def _parse_output_format(output_config: Any) -> ResponseFormat | None:
    fmt = output_config.get("format") if isinstance(output_config, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        return ResponseFormat(type="json_schema", json_schema=fmt["schema"])
    return None


# --------------------------------------------------------------------------------------------------
# Canonical -> upstream request body
# --------------------------------------------------------------------------------------------------


def supports_structured_output(model: str) -> bool:
    """Claude models with ``output_config.format`` (4.5 and later, Opus 4.1)."""
    return bool(_STRUCTURED_MODEL.search(model))


def supports_thinking(model: str) -> bool:
    """Claude models that take extended thinking."""
    return bool(_THINKING_MODEL.search(model))


def build_body(request: ChatRequest, default_max_tokens: int | None = None, *, count_only: bool = False,
               ) -> dict[str, Any]:
    """An Anthropic messages body for ``request``; what Anthropic cannot take is dropped with a debug log."""
    same = request.source_format == NAME
    if request.n != 1:
        raise InvalidRequestError("n > 1 cannot be sent to an Anthropic upstream: it returns one answer per "
                                  "request. Send n separate requests instead.", param="n")
    body: dict[str, Any] = {"model": request.model}
    if not count_only:
        body["max_tokens"] = request.max_tokens or default_max_tokens or FALLBACK_MAX_TOKENS
    system = [_text_json(b) for b in request.system if b.text]
    if system:
        body["system"] = system[0]["text"] if len(system) == 1 and "cache_control" not in system[0] else system
    body["messages"] = build_messages(request.messages, same)
    last = body["messages"][-1] if body["messages"] else None
    if not same and last and last["role"] == "assistant" and last["content"][-1].get("type") == "text":
        # a prefill: Anthropic refuses one that ends with whitespace
        text = last["content"][-1]["text"].rstrip()
        if text:
            last["content"][-1] = {**last["content"][-1], "text": text}
        else:
            last["content"].pop()
            if not last["content"]:
                body["messages"].pop()
    if not same and (not body["messages"] or body["messages"][0]["role"] != "user"):
        # Anthropic: "messages: first message must use the user role" (and at least one message);
        # OpenAI accepts a conversation that opens with an assistant greeting, or system prompts only.
        log.debug("opening the conversation with a placeholder user turn for %s", NAME)
        body["messages"].insert(0, {"role": "user", "content": [{"type": "text", "text": PLACEHOLDER_TURN}]})
    strict_ok = supports_structured_output(request.model)
    tools = [_build_tool(t, same, strict_ok) for t in request.tools if same or t.extra.get("type") in (None, "custom")]
    if tools:
        body["tools"] = tools
    choice = request.tool_choice
    if choice is not None and tools:
        body["tool_choice"] = {"type": choice.type}
        if choice.type == "tool":
            body["tool_choice"]["name"] = choice.name
        if choice.disable_parallel_tool_use and choice.type != "none":
            body["tool_choice"]["disable_parallel_tool_use"] = True
    thinking = _build_thinking(request, body.get("max_tokens"), same)
    if thinking is not None and not same and _unsigned_tool_turn(body["messages"]):
        # Anthropic: with thinking on, the assistant turn of an ongoing tool loop must open with its signed
        # thinking, which a client of another format never has.
        dropped("reasoning", NAME, "the last tool-calling assistant turn carries no signed thinking")
        thinking = None
    if thinking is not None:
        body["thinking"] = thinking
    if not count_only:
        _build_sampling(body, request, same, thinking_on=bool(thinking and thinking["type"] == "enabled"))
        if request.stop:
            body["stop_sequences"] = request.stop
        metadata = dict(request.metadata) if same else {}
        if request.user and "user_id" not in metadata:
            metadata["user_id"] = request.user
        if metadata:
            body["metadata"] = metadata
        if request.stream:
            body["stream"] = True
    fmt = request.response_format
    if not same and fmt is not None and fmt.type == "json_schema" and supports_structured_output(request.model):
        body["output_config"] = {"format": {"type": "json_schema", "schema": fmt.json_schema or {}}}
    elif not same and fmt is not None and fmt.type != "text":
        dropped("response_format", NAME, f"{request.model} has no structured output; the prompt must ask for JSON")
    if same:
        allowed = COUNT_FIELDS if count_only else None
        body.update({k: v for k, v in request.extra.items() if k not in body and (allowed is None or k in allowed)})
    elif request.extra:
        dropped(f"fields {sorted(request.extra)}", NAME, f"they belong to {request.source_format}")
    return body


def _unsigned_tool_turn(messages: list[dict[str, Any]]) -> bool:
    """Whether the last assistant turn calls tools without opening with a thinking block."""
    for message in reversed(messages):
        if message["role"] == "assistant":
            blocks = message["content"]
            calls = any(b.get("type") == "tool_use" for b in blocks)
            return calls and blocks[0].get("type") not in ("thinking", "redacted_thinking")
    return False


def _text_json(block: TextBlock) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "text", "text": block.text}
    if block.cache_control is not None:
        out["cache_control"] = block.cache_control
    return out


def _image_json(block: ImageBlock) -> dict[str, Any]:
    if block.data is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": block.media_type or "image/png",
                                            "data": block.data}}
    return {"type": "image", "source": {"type": "url", "url": block.url or ""}}


def _block_json(block: ContentBlock, same: bool) -> dict[str, Any] | None:
    if isinstance(block, TextBlock):
        return _text_json(block) if block.text else None  # Anthropic rejects empty text blocks
    if isinstance(block, ImageBlock):
        return _image_json(block)
    if isinstance(block, ToolUseBlock):
        return {"type": "tool_use", "id": anthropic_tool_id(block.id), "name": block.name, "input": block.input}
    if isinstance(block, ToolResultBlock):
        out: dict[str, Any] = {"type": "tool_result", "tool_use_id": anthropic_tool_id(block.tool_use_id)}
        content = [b for b in (_block_json(c, same) for c in block.content) if b is not None]
        if content:
            out["content"] = content
        if block.is_error:
            out["is_error"] = True
        return out
    if isinstance(block, ThinkingBlock):
        if block.redacted:
            return {"type": "redacted_thinking", "data": block.data or ""}
        if block.signature:
            return {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
        dropped("thinking without a signature", NAME, "Anthropic only accepts its own signed thinking back")
        return None
    if same:
        return block.raw
    dropped(f"{block.type} block", NAME, "unknown to higgs")
    return None


def build_messages(messages: list[Message], same: bool) -> list[dict[str, Any]]:
    """Anthropic messages: empty turns skipped, consecutive same-role turns merged (tool results first)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        blocks = [b for b in (_block_json(c, same) for c in message.content) if b is not None]
        if not blocks:
            dropped(f"an empty {message.role} turn", NAME, "Anthropic rejects empty content")
            continue
        if out and out[-1]["role"] == message.role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": message.role, "content": blocks})
    for turn in out:
        if turn["role"] == "user":  # tool results must open the user turn that answers the calls
            turn["content"].sort(key=lambda b: b.get("type") != "tool_result")
    return out


def _build_tool(tool: Tool, same: bool, strict_ok: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    if tool.extra.get("type") in (None, "custom"):  # server tools (web_search, bash, ...) carry no schema
        out["input_schema"] = tool.input_schema
    if same:
        out.update({k: v for k, v in tool.extra.items() if k not in out})
    elif isinstance(tool.extra.get("strict"), bool):
        if strict_ok:
            out["strict"] = tool.extra["strict"]
        else:
            dropped(f"strict on tool {tool.name!r}", NAME, "this model has no strict tool use")
    return out


def _build_thinking(request: ChatRequest, max_tokens: int | None, same: bool) -> dict[str, Any] | None:
    reasoning = request.reasoning
    if same:
        if isinstance(request.extra.get("thinking"), dict):
            return dict(request.extra["thinking"])  # the client's own config, verbatim
        if reasoning is None or reasoning.enabled is None:
            return None
        if reasoning.enabled is False:
            return {"type": "disabled"}
        return {"type": "enabled", "budget_tokens": reasoning.budget_tokens or EFFORT_BUDGET["medium"]}
    if reasoning is None or reasoning.enabled is False:
        return None
    if not (reasoning.enabled or reasoning.effort):
        return None
    if not supports_thinking(request.model):
        dropped("reasoning", NAME, f"{request.model} has no extended thinking")
        return None
    budget = reasoning.budget_tokens or EFFORT_BUDGET.get(reasoning.effort or "medium", 8192)
    if max_tokens is not None:
        budget = min(budget, max_tokens - 1)  # Anthropic wants budget_tokens < max_tokens
    if budget < MIN_THINKING_BUDGET:
        dropped("reasoning", NAME, f"max_tokens leaves no room for the {MIN_THINKING_BUDGET}-token minimum budget")
        return None
    return {"type": "enabled", "budget_tokens": budget}


def _build_sampling(body: dict[str, Any], request: ChatRequest, same: bool, *, thinking_on: bool) -> None:
    sampling = request.sampling
    temperature, top_p, top_k = sampling.temperature, sampling.top_p, sampling.top_k
    if not same:
        if temperature is not None and temperature > 1.0:
            log.debug("clamping temperature %s to Anthropic's maximum 1.0", temperature)
            temperature = 1.0
        if temperature is not None and top_p is not None:
            dropped("top_p", NAME, "recent Claude models reject temperature and top_p together")
            top_p = None
        if thinking_on:
            for name, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k)):
                if value is not None:
                    dropped(name, NAME, "not allowed with extended thinking")
            temperature = top_p = top_k = None
    for key, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k)):
        if value is not None:
            body[key] = value
    for key in ("min_p", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias",
                "top_logprobs"):
        if getattr(sampling, key) is not None:
            dropped(key, NAME)
    if sampling.logprobs:
        dropped("logprobs", NAME)


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------


def usage_json(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage: ``input_tokens`` excludes cache reads and writes, which have their own fields."""
    return {
        "input_tokens": max(usage.input_tokens - usage.cached_tokens - usage.cache_creation_tokens, 0),
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_creation_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def parse_usage(raw: Any, base: Usage | None = None) -> Usage:
    """Canonical usage (``input_tokens`` includes cache reads and writes); missing fields keep ``base``."""
    usage = base.model_copy() if base else Usage()
    if not isinstance(raw, dict):
        return usage
    fresh = raw.get("input_tokens")
    read = raw.get("cache_read_input_tokens")
    write = raw.get("cache_creation_input_tokens")
    if read is not None:
        usage.cached_tokens = int(read)
    if write is not None:
        usage.cache_creation_tokens = int(write)
    if fresh is not None:
        usage.input_tokens = int(fresh) + usage.cached_tokens + usage.cache_creation_tokens
    if raw.get("output_tokens") is not None:
        usage.output_tokens = int(raw["output_tokens"])
    return usage


def content_json(block: ContentBlock) -> dict[str, Any] | None:
    """A response content block; None for blocks an Anthropic client cannot receive."""
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text} if block.text else None
    if isinstance(block, ToolUseBlock):
        return {"type": "tool_use", "id": anthropic_tool_id(block.id), "name": block.name, "input": block.input}
    if isinstance(block, ThinkingBlock):
        if block.redacted:
            return {"type": "redacted_thinking", "data": block.data or ""}
        return {"type": "thinking", "thinking": block.thinking, "signature": block.signature or ""}
    if isinstance(block, UnknownBlock):
        return block.raw or None
    if isinstance(block, ImageBlock):
        return _image_json(block)
    return None


def render_response(response: ChatResponse, model: str) -> dict[str, Any]:
    """A ``message`` object."""
    return {
        "id": response.id,
        "type": "message",
        "role": "assistant",
        "model": response.model or model,
        "content": [b for b in (content_json(c) for c in response.content) if b is not None],
        "stop_reason": response.stop_reason,
        "stop_sequence": response.stop_sequence,
        "usage": usage_json(response.usage),
    }


def stop_reason(value: Any) -> StopReason | None:
    """A canonical stop reason from Anthropic's (unknown values count as ``end_turn``)."""
    if value is None:
        return None
    if value == "model_context_window_exceeded":  # the context filled up: as good as a length stop
        return "max_tokens"
    return value if value in STOP_REASONS else "end_turn"


def parse_response(body: Mapping[str, Any]) -> ChatResponse:
    """A canonical response from an upstream ``message``."""
    content: list[ContentBlock] = []
    for raw in body.get("content") or []:
        if isinstance(raw, dict):
            try:
                content.append(_parse_block(raw, "content"))
            except InvalidRequestError:
                content.append(UnknownBlock(type=str(raw.get("type")), raw=raw))
    return ChatResponse(
        id=str(body.get("id") or new_id("msg")),
        model=str(body.get("model") or ""),
        content=content,
        stop_reason=stop_reason(body.get("stop_reason")) or "end_turn",
        stop_sequence=body.get("stop_sequence") if isinstance(body.get("stop_sequence"), str) else None,
        usage=parse_usage(body.get("usage")),
    )
