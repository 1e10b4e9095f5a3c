"""OpenAI Chat Completions: request parse/build and response render/parse (non-streamed)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from higgs.errors import InvalidRequestError
from higgs.formats._common import (
    compact_json,
    dropped,
    expect_dict,
    expect_list,
    expect_str,
    log,
    opt_bool,
    opt_int,
    opt_number,
    parse_data_url,
)
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
    Tool,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
    UnknownBlock,
)

NAME = "openai"

KNOWN_FIELDS = frozenset({
    "model", "messages", "tools", "functions", "tool_choice", "function_call", "parallel_tool_calls",
    "response_format", "stop", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
    "repetition_penalty", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
    "top_logprobs", "n", "user", "reasoning_effort", "stream", "stream_options",
})
EFFORTS = {"minimal": "minimal", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}
# OpenAI's reasoning models reject ``max_tokens`` and take ``max_completion_tokens``.
_REASONING_MODEL = re.compile(r"^(?:[\w.-]+/)?(?:o\d|gpt-5)", re.I)


# --------------------------------------------------------------------------------------------------
# Client request -> canonical
# --------------------------------------------------------------------------------------------------


def parse_request(body: Mapping[str, Any]) -> ChatRequest:
    """Parse a ``/v1/chat/completions`` body (raises ``InvalidRequestError`` on bad input)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' is required and must be a string.", param="model")
    raw_messages = expect_list(body.get("messages"), "messages")
    if not raw_messages:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages")
    system, messages = _parse_messages(raw_messages)
    tools = _parse_tools(body)
    max_tokens = opt_int(body, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = opt_int(body, "max_tokens", minimum=1)
    stream_options = body.get("stream_options") or {}
    expect_dict(stream_options, "stream_options")
    effort = body.get("reasoning_effort")
    reasoning = None
    if effort is not None:
        if effort == "none":
            reasoning = Reasoning(enabled=False)
        elif effort in EFFORTS:
            reasoning = Reasoning(effort=EFFORTS[effort])
        else:
            raise InvalidRequestError(f"Invalid 'reasoning_effort': {effort!r}.", param="reasoning_effort")
    n = opt_int(body, "n", minimum=1) or 1
    user = body.get("user")
    return ChatRequest(
        model=model,
        system=system,
        messages=messages,
        tools=tools,
        tool_choice=_parse_tool_choice(body, tools),
        max_tokens=max_tokens,
        stop=_parse_stop(body.get("stop")),
        sampling=_parse_sampling(body),
        n=n,
        response_format=_parse_response_format(body.get("response_format")),
        reasoning=reasoning,
        stream=opt_bool(body, "stream"),
        include_usage=opt_bool(stream_options, "include_usage", prefix="stream_options."),
        user=user if isinstance(user, str) else None,
        extra={k: v for k, v in body.items() if k not in KNOWN_FIELDS},
        source_format=NAME,
    )


def _parse_messages(raw_messages: list[Any]) -> tuple[list[TextBlock], list[Message]]:
    system: list[TextBlock] = []
    messages: list[Message] = []
    legacy_calls: dict[str, list[str]] = {}
    last_tool_turn: Message | None = None
    for i, raw in enumerate(raw_messages):
        where = f"messages[{i}]"
        msg = expect_dict(raw, where)
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(b for b in _text_parts(msg.get("content"), where) if b.text)
            continue
        if role in ("tool", "function"):
            result = _parse_tool_message(msg, where, legacy_calls)
            if last_tool_turn is not None and messages and messages[-1] is last_tool_turn:
                last_tool_turn.content.append(result)
            else:
                last_tool_turn = Message(role="user", content=[result])
                messages.append(last_tool_turn)
            continue
        if role == "user":
            messages.append(Message(role="user", content=_user_content(msg.get("content"), where)))
        elif role == "assistant":
            messages.append(Message(role="assistant", content=_assistant_content(msg, where, i, legacy_calls)))
        else:
            raise InvalidRequestError(f"Invalid role {role!r} in '{where}'.", param=f"{where}.role")
    return system, messages


def _text_parts(content: Any, where: str) -> list[TextBlock]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextBlock(text=content)]
    blocks = []
    for j, part in enumerate(expect_list(content, f"{where}.content")):
        part = expect_dict(part, f"{where}.content[{j}]")
        if part.get("type") in ("text", "refusal"):
            text = part.get("text", part.get("refusal"))
            blocks.append(TextBlock(text=expect_str(text, f"{where}.content[{j}].text")))
        else:
            raise InvalidRequestError(
                f"'{where}.content[{j}]' must be a text part here.", param=f"{where}.content[{j}].type"
            )
    return blocks


def _user_content(content: Any, where: str) -> list[ContentBlock]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextBlock(text=content)]
    blocks: list[ContentBlock] = []
    for j, part in enumerate(expect_list(content, f"{where}.content")):
        pwhere = f"{where}.content[{j}]"
        part = expect_dict(part, pwhere)
        kind = part.get("type")
        if kind == "text":
            blocks.append(TextBlock(text=expect_str(part.get("text"), f"{pwhere}.text")))
        elif kind == "image_url":
            blocks.append(_parse_image(part.get("image_url"), pwhere))
        elif isinstance(kind, str):
            log.debug("keeping unknown OpenAI content part %r", kind)
            blocks.append(UnknownBlock(type=kind, raw=part))
        else:
            raise InvalidRequestError(f"'{pwhere}.type' is required.", param=f"{pwhere}.type")
    return blocks


def _parse_image(value: Any, where: str) -> ImageBlock:
    if isinstance(value, str):
        value = {"url": value}
    image = expect_dict(value, f"{where}.image_url")
    url = expect_str(image.get("url"), f"{where}.image_url.url")
    detail = image.get("detail") if isinstance(image.get("detail"), str) else None
    inline = parse_data_url(url)
    if inline:
        return ImageBlock(media_type=inline[0], data=inline[1], detail=detail)
    if url.startswith("data:"):
        raise InvalidRequestError(f"'{where}.image_url.url' must be a base64 data URL.", param=f"{where}.image_url")
    return ImageBlock(url=url, detail=detail)


def _parse_arguments(arguments: Any, where: str) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if not isinstance(arguments, str):
        raise InvalidRequestError(f"'{where}' must be a JSON string.", param=where)
    try:
        parsed = json.loads(arguments)
    except ValueError as err:
        raise InvalidRequestError(f"'{where}' is not valid JSON: {err}.", param=where) from err
    if not isinstance(parsed, dict):
        raise InvalidRequestError(f"'{where}' must encode a JSON object.", param=where)
    return parsed


def _assistant_content(
    msg: dict[str, Any], where: str, index: int, legacy_calls: dict[str, list[str]]
) -> list[ContentBlock]:
    blocks: list[ContentBlock] = []
    reasoning = msg.get("reasoning_content", msg.get("reasoning"))
    if isinstance(reasoning, str) and reasoning:
        blocks.append(ThinkingBlock(thinking=reasoning))
    blocks.extend(_text_parts(msg.get("content"), where))
    if isinstance(msg.get("refusal"), str) and msg["refusal"] and not blocks:
        blocks.append(TextBlock(text=msg["refusal"]))
    for j, call in enumerate(expect_list(msg.get("tool_calls") or [], f"{where}.tool_calls")):
        cwhere = f"{where}.tool_calls[{j}]"
        call = expect_dict(call, cwhere)
        function = expect_dict(call.get("function"), f"{cwhere}.function")
        call_id = expect_str(call.get("id"), f"{cwhere}.id")
        name = expect_str(function.get("name"), f"{cwhere}.function.name")
        args = _parse_arguments(function.get("arguments"), f"{cwhere}.function.arguments")
        blocks.append(ToolUseBlock(id=call_id, name=name, input=args))
    if msg.get("function_call") is not None:
        function = expect_dict(msg["function_call"], f"{where}.function_call")
        name = expect_str(function.get("name"), f"{where}.function_call.name")
        call_id = f"call_legacy_{index}"
        legacy_calls.setdefault(name, []).append(call_id)
        args = _parse_arguments(function.get("arguments"), f"{where}.function_call.arguments")
        blocks.append(ToolUseBlock(id=call_id, name=name, input=args))
    return blocks


def _parse_tool_message(msg: dict[str, Any], where: str, legacy_calls: dict[str, list[str]]) -> ToolResultBlock:
    if msg["role"] == "function":
        name = expect_str(msg.get("name"), f"{where}.name")
        pending = legacy_calls.get(name)
        call_id = pending.pop(0) if pending else f"call_legacy_{name}"
    else:
        call_id = expect_str(msg.get("tool_call_id"), f"{where}.tool_call_id")
    content = msg.get("content")
    parts: list[TextBlock | ImageBlock] = []
    if isinstance(content, list):
        for j, part in enumerate(content):
            part = expect_dict(part, f"{where}.content[{j}]")
            if part.get("type") == "image_url":
                parts.append(_parse_image(part.get("image_url"), f"{where}.content[{j}]"))
            elif part.get("type") == "text":
                parts.append(TextBlock(text=expect_str(part.get("text"), f"{where}.content[{j}].text")))
            else:
                raise InvalidRequestError(f"Unsupported tool content part in '{where}'.", param=f"{where}.content")
    elif isinstance(content, str):
        parts.append(TextBlock(text=content))
    elif content is not None:
        raise InvalidRequestError(f"'{where}.content' must be a string or an array.", param=f"{where}.content")
    return ToolResultBlock(tool_use_id=call_id, content=parts)


def _parse_tools(body: Mapping[str, Any]) -> list[Tool]:
    tools: list[Tool] = []
    for i, raw in enumerate(expect_list(body.get("tools") or [], "tools")):
        tool = expect_dict(raw, f"tools[{i}]")
        if tool.get("type", "function") != "function":
            raise InvalidRequestError(
                f"Unsupported tool type {tool.get('type')!r}: only 'function' tools are supported.",
                param=f"tools[{i}].type",
            )
        tools.append(_parse_function(tool.get("function"), f"tools[{i}].function"))
    for i, raw in enumerate(expect_list(body.get("functions") or [], "functions")):
        tools.append(_parse_function(raw, f"functions[{i}]"))
    return tools


def _parse_function(value: Any, where: str) -> Tool:
    function = expect_dict(value, where)
    name = expect_str(function.get("name"), f"{where}.name")
    params = function.get("parameters")
    extra = {"strict": function["strict"]} if function.get("strict") is not None else {}
    return Tool(
        name=name,
        description=function.get("description") if isinstance(function.get("description"), str) else None,
        input_schema=expect_dict(params, f"{where}.parameters") if params is not None else
        {"type": "object", "properties": {}},
        extra=extra,
    )


def _parse_tool_choice(body: Mapping[str, Any], tools: list[Tool]) -> ToolChoice | None:
    raw = body.get("tool_choice", body.get("function_call"))
    param = "tool_choice" if "tool_choice" in body else "function_call"
    choice: ToolChoice | None
    if raw is None:
        choice = None
    elif raw in ("none", "auto"):
        choice = ToolChoice(type=raw)
    elif raw == "required":
        choice = ToolChoice(type="any")
    elif isinstance(raw, dict):
        function = raw.get("function", raw) if raw.get("type", "function") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise InvalidRequestError(f"'{param}' must name a function.", param=param)
        choice = ToolChoice(type="tool", name=name)
    else:
        raise InvalidRequestError(f"Invalid '{param}': {raw!r}.", param=param)
    # as OpenAI answers; a local model otherwise ignored the choice silently
    if choice is not None and choice.type in ("any", "tool") and not tools:
        raise InvalidRequestError(f"'{param}' is only allowed when 'tools' are specified.", param=param)
    if choice is not None and choice.type == "tool" and choice.name not in {t.name for t in tools}:
        raise InvalidRequestError(f"'{param}' names the function '{choice.name}', which is not in 'tools'.",
                                  param=param)
    if body.get("parallel_tool_calls") is False:
        choice = (choice or ToolChoice(type="auto")).model_copy(update={"disable_parallel_tool_use": True})
    return choice


def _parse_stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    stops = expect_list(value, "stop")
    if not all(isinstance(s, str) for s in stops):
        raise InvalidRequestError("'stop' must be a string or an array of strings.", param="stop")
    return stops


def _parse_sampling(body: Mapping[str, Any]) -> Sampling:
    bias = body.get("logit_bias")
    logit_bias = None
    if bias is not None:
        try:
            logit_bias = {int(k): float(v) for k, v in expect_dict(bias, "logit_bias").items()}
        except (TypeError, ValueError) as err:
            raise InvalidRequestError("'logit_bias' maps token ids to numbers.", param="logit_bias") from err
    return Sampling(
        temperature=opt_number(body, "temperature"),
        top_p=opt_number(body, "top_p"),
        top_k=opt_int(body, "top_k"),
        min_p=opt_number(body, "min_p"),
        seed=opt_int(body, "seed"),
        presence_penalty=opt_number(body, "presence_penalty"),
        frequency_penalty=opt_number(body, "frequency_penalty"),
        repetition_penalty=opt_number(body, "repetition_penalty"),
        logit_bias=logit_bias,
        logprobs=opt_bool(body, "logprobs"),
        top_logprobs=opt_int(body, "top_logprobs", minimum=0),
    )


def _parse_response_format(value: Any) -> ResponseFormat | None:
    if value is None:
        return None
    fmt = expect_dict(value, "response_format")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return ResponseFormat(type=kind)
    if kind == "json_schema":
        spec = expect_dict(fmt.get("json_schema"), "response_format.json_schema")
        schema = spec.get("schema")
        return ResponseFormat(
            type="json_schema",
            json_schema=expect_dict(schema, "response_format.json_schema.schema") if schema is not None else {},
            name=spec.get("name") if isinstance(spec.get("name"), str) else None,
            strict=spec.get("strict") if isinstance(spec.get("strict"), bool) else None,
        )
    raise InvalidRequestError(f"Invalid 'response_format.type': {kind!r}.", param="response_format.type")


# --------------------------------------------------------------------------------------------------
# Canonical -> upstream request body
# --------------------------------------------------------------------------------------------------


def is_reasoning_model(model: str) -> bool:
    """OpenAI's o-series and gpt-5 family, which take ``max_completion_tokens`` and ``reasoning_effort``."""
    return bool(_REASONING_MODEL.match(model))


def build_body(request: ChatRequest, default_max_tokens: int | None = None) -> dict[str, Any]:
    """An OpenAI chat body for ``request``; fields OpenAI has no place for are dropped with a debug log."""
    same = request.source_format == NAME
    body: dict[str, Any] = {"model": request.model, "messages": _build_messages(request, same)}
    if request.tools:
        tools = [_build_tool(t) for t in request.tools if _is_function_tool(t)]
        if tools:
            body["tools"] = tools
    choice = request.tool_choice
    if choice is not None and (body.get("tools") or choice.type == "none"):
        body["tool_choice"] = {"auto": "auto", "none": "none", "any": "required"}.get(choice.type) or {
            "type": "function", "function": {"name": choice.name}}
        if choice.disable_parallel_tool_use and body.get("tools"):
            body["parallel_tool_calls"] = False
    max_tokens = request.max_tokens or default_max_tokens
    if max_tokens is not None:
        reasoning_model = is_reasoning_model(request.model) or bool(
            same and request.reasoning and request.reasoning.effort)
        body["max_completion_tokens" if reasoning_model else "max_tokens"] = max_tokens
    if request.stop:
        body["stop"] = request.stop
    _build_sampling(body, request.sampling, same)
    if request.n != 1:
        body["n"] = request.n
    if request.response_format is not None:
        body["response_format"] = _build_response_format(request.response_format)
    if request.reasoning is not None:
        _build_reasoning(body, request)
    if request.user:
        body["user"] = request.user
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if same:
        body.update({k: v for k, v in request.extra.items() if k not in body})
    elif request.extra:
        dropped(f"fields {sorted(request.extra)}", NAME, f"they belong to {request.source_format}")
    return body


def _is_function_tool(tool: Tool) -> bool:
    if tool.extra.get("type") in (None, "custom", "function"):
        return True
    dropped(f"tool {tool.name!r} ({tool.extra.get('type')})", NAME, "server tools cannot be translated")
    return False


def _build_tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = tool.input_schema
    if isinstance(tool.extra.get("strict"), bool):
        function["strict"] = tool.extra["strict"]
    return {"type": "function", "function": function}


def _build_sampling(body: dict[str, Any], sampling: Sampling, same: bool) -> None:
    for key in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "top_logprobs"):
        value = getattr(sampling, key)
        if value is not None:
            body[key] = value
    if sampling.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in sampling.logit_bias.items()}
    if sampling.logprobs:
        body["logprobs"] = True
    for key in ("top_k", "min_p", "repetition_penalty"):
        value = getattr(sampling, key)
        if value is None:
            continue
        if same:  # the client sent it to an OpenAI-compatible server that may well support it
            body[key] = value
        else:
            dropped(key, NAME)


def _build_response_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    spec: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.json_schema or {}}
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": spec}


def _build_reasoning(body: dict[str, Any], request: ChatRequest) -> None:
    reasoning = request.reasoning
    assert reasoning is not None
    if request.source_format == NAME:  # the client's own choice, to a server of its own format
        if reasoning.effort is not None:
            body["reasoning_effort"] = reasoning.effort
        elif reasoning.enabled is False:
            body["reasoning_effort"] = "none"
        return
    if not reasoning.enabled and not reasoning.effort:
        return
    if not is_reasoning_model(request.model):
        dropped("reasoning", NAME, "only OpenAI reasoning models take reasoning_effort")
        return
    if reasoning.effort is not None:
        body["reasoning_effort"] = reasoning.effort
    else:
        budget = reasoning.budget_tokens or 0
        body["reasoning_effort"] = "low" if budget < 4096 else "medium" if budget < 16384 else "high"


def _build_messages(request: ChatRequest, same: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": b.text} for b in request.system]
    for message in request.messages:
        if message.role == "assistant":
            out.append(_build_assistant(message, same))
        else:
            out.extend(_build_user(message, same))
    return out


def _image_part(block: ImageBlock) -> dict[str, Any]:
    url = block.url or f"data:{block.media_type or 'image/png'};base64,{block.data or ''}"
    image: dict[str, Any] = {"url": url}
    if block.detail:
        image["detail"] = block.detail
    return {"type": "image_url", "image_url": image}


def _build_user(message: Message, same: bool) -> list[dict[str, Any]]:
    """Tool results become ``tool`` messages, first (OpenAI wants them right after the calls)."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    result_images: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            text = "".join(b.text for b in block.content if isinstance(b, TextBlock))
            if block.is_error:
                text = f"Error: {text}" if text else "Error"
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
            images = [_image_part(b) for b in block.content if isinstance(b, ImageBlock)]
            if images:
                # Tool messages carry text only: the images follow in a user turn that says where they came from.
                result_images.append({"type": "text", "text": f"Images returned by tool call {block.tool_use_id}:"})
                result_images.extend(images)
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block))
        elif isinstance(block, UnknownBlock) and same:
            parts.append(block.raw)
        else:
            dropped(f"{block.type} block in a user message", NAME)
    parts = result_images + parts
    if parts or not out:
        if len(parts) == 1 and parts[0]["type"] == "text":
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts if parts else ""})
    return out


def _build_assistant(message: Message, same: bool) -> dict[str, Any]:
    texts = [b.text for b in message.content if isinstance(b, TextBlock)]
    calls = [
        {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": compact_json(b.input)}}
        for b in message.content
        if isinstance(b, ToolUseBlock)
    ]
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    thinking = "".join(b.thinking for b in message.content if isinstance(b, ThinkingBlock) and not b.redacted)
    if thinking and same:
        out["reasoning_content"] = thinking
    elif thinking:
        dropped("thinking in an assistant turn", NAME, "OpenAI takes no reasoning as input")
    if calls:
        out["tool_calls"] = calls
    return out
