"""OpenAI Chat Completions responses: canonical <-> ``chat.completion`` objects, usage and finish reasons."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from higgs.formats._common import compact_json, log
from higgs.messages import (
    ChatResponse,
    ContentBlock,
    StopReason,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
    Usage,
    new_id,
)

FINISH_TO_STOP: dict[str, StopReason] = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
    "content_filter": "refusal",
}
STOP_TO_FINISH = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
    "refusal": "content_filter", "pause_turn": "stop",
}


def usage_json(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def parse_usage(raw: Any) -> Usage:
    """Canonical usage from OpenAI's ``usage`` object (missing parts count as zero)."""
    if not isinstance(raw, dict):
        return Usage()
    prompt = raw.get("prompt_tokens_details") or {}
    completion = raw.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=int(raw.get("prompt_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(prompt.get("cached_tokens") or 0) if isinstance(prompt, dict) else 0,
        reasoning_tokens=int(completion.get("reasoning_tokens") or 0) if isinstance(completion, dict) else 0,
    )


def finish_reason(stop_reason: str | None) -> str:
    """OpenAI ``finish_reason`` for a canonical stop reason."""
    return STOP_TO_FINISH.get(stop_reason or "end_turn", "stop")


def render_response(response: ChatResponse) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    texts = [b.text for b in response.content if isinstance(b, TextBlock)]
    calls = [
        {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": compact_json(b.input)}}
        for b in response.content
        if isinstance(b, ToolUseBlock)
    ]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    thinking = "".join(b.thinking for b in response.content if isinstance(b, ThinkingBlock) and not b.redacted)
    if thinking:
        message["reasoning_content"] = thinking
    if calls:
        message["tool_calls"] = calls
    logprobs = response.extra.get("logprobs")  # OpenAI's {"content": [...]}, set by providers that report them
    return {
        "id": response.id,
        "object": "chat.completion",
        "created": response.created,
        "model": response.model,
        "choices": [{"index": 0, "message": message, "logprobs": logprobs if isinstance(logprobs, dict) else None,
                     "finish_reason": finish_reason(response.stop_reason)}],
        "usage": usage_json(response.usage),
        "system_fingerprint": None,
    }


def tool_input(arguments: Any) -> dict[str, Any]:
    """Tool-call arguments from an upstream; text that is not a JSON object is kept under ``_raw_arguments``."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = json.loads(arguments)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    log.warning("upstream tool-call arguments are not a JSON object; kept as _raw_arguments")
    return {"_raw_arguments": arguments}


def parse_response(body: Mapping[str, Any]) -> ChatResponse:
    """A canonical response from an upstream ``chat.completion`` (the first choice)."""
    choices = body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    content: list[ContentBlock] = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append(ThinkingBlock(thinking=reasoning))
    text = msg.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if isinstance(text, str) and text:
        content.append(TextBlock(text=text))
    stop = FINISH_TO_STOP.get(choice.get("finish_reason") or "stop", "end_turn")
    if isinstance(msg.get("refusal"), str) and msg["refusal"]:
        content.append(TextBlock(text=msg["refusal"]))
        stop = "refusal"
    for call in msg.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(ToolUseBlock(id=call.get("id") or new_id("call"), name=function.get("name") or "",
                                    input=tool_input(function.get("arguments"))))
    if isinstance(msg.get("function_call"), dict):
        function = msg["function_call"]
        content.append(ToolUseBlock(id=new_id("call"), name=function.get("name") or "",
                                    input=tool_input(function.get("arguments"))))
    if stop == "end_turn" and any(isinstance(b, ToolUseBlock) for b in content):
        stop = "tool_use"
    created = body.get("created")
    return ChatResponse(
        id=str(body.get("id") or new_id("chatcmpl")),
        model=str(body.get("model") or ""),
        **({"created": created} if isinstance(created, int) else {}),
        content=content,
        stop_reason=stop,
        usage=parse_usage(body.get("usage")),
    )
