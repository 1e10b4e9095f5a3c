"""Rendering canonical requests into prompt token ids with the model's chat template.

Canonical blocks become the shapes Hugging Face chat templates expect: ``system``/``user``/``assistant``
messages with string content, assistant ``tool_calls`` (``{"type": "function", "function": {"name",
"arguments"}}``), ``tool`` messages for tool results, ``reasoning_content`` for thinking blocks, and
``tools`` as JSON-schema function specs. Nothing is silently dropped: an image sent to a text-only model
is a 400, and so is a chat request to a model without any chat template.
"""

from __future__ import annotations

import re
from typing import Any

from higgs.errors import InvalidRequestError
from higgs.messages import (
    ChatRequest,
    CompletionRequest,
    ImageBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UnknownBlock,
)

from higgs_mlx.loader import LoadedModel


def _image_error(lm: LoadedModel) -> InvalidRequestError:
    return InvalidRequestError(f"Model '{lm.name}' is text-only and cannot read images; send text, or use a "
                               "vision model.", param="messages", code="image_not_supported")


image_error = _image_error


def _image_text(lm: LoadedModel) -> str:
    """The placeholder an image becomes in a vision model's prompt (see ``higgs_mlx.vision``); 400 otherwise."""
    adapter = getattr(lm, "vision", None)
    if adapter is None:
        raise _image_error(lm)
    return str(adapter.placeholder)


def _text_of(blocks: list[Any], lm: LoadedModel) -> str:
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, ImageBlock):
            parts.append(_image_text(lm))
    return "".join(parts)


def template_messages(request: ChatRequest, lm: LoadedModel) -> list[dict[str, Any]]:
    """The request's conversation as chat-template message dicts."""
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system_text()})
    for message in request.messages:
        if message.role == "assistant":
            text, thinking, calls = [], [], []
            for block in message.content:
                if isinstance(block, TextBlock):
                    text.append(block.text)
                elif isinstance(block, ThinkingBlock) and not block.redacted:
                    thinking.append(block.thinking)
                elif isinstance(block, ToolUseBlock):
                    calls.append({"id": block.id, "type": "function",
                                  "function": {"name": block.name, "arguments": block.input}})
                elif isinstance(block, ImageBlock):
                    text.append(_image_text(lm))
            entry: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
            if thinking:
                entry["reasoning_content"] = "".join(thinking)
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
            continue
        pending: list[str] = []
        for block in message.content:
            if isinstance(block, ToolResultBlock):
                if pending:
                    out.append({"role": "user", "content": "".join(pending)})
                    pending = []
                content = _text_of(list(block.content), lm)
                if block.is_error:
                    content = f"Error: {content}"
                out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": content})
            elif isinstance(block, TextBlock):
                pending.append(block.text)
            elif isinstance(block, ImageBlock):
                pending.append(_image_text(lm))
            elif isinstance(block, UnknownBlock):
                raise InvalidRequestError(f"Content block type '{block.type}' is not supported by local models.",
                                          param="messages")
        if pending or not message.content:
            out.append({"role": "user", "content": "".join(pending)})
    return out


def template_tools(request: ChatRequest) -> list[dict[str, Any]] | None:
    """Tools as the function specs chat templates expect, or None without tools."""
    if not request.tools or (request.tool_choice is not None and request.tool_choice.type == "none"):
        return None
    return [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                              "parameters": t.input_schema}} for t in request.tools]


def render_chat(request: ChatRequest, lm: LoadedModel, options: dict[str, Any] | None = None) -> str:
    """The prompt text for a chat request (the final assistant message, if any, is continued).

    ``options`` are the agents extension's template decisions (``include_tools``, ``enable_thinking``);
    without them tools are rendered unless ``tool_choice`` is ``none`` and ``enable_thinking`` follows
    ``reasoning.enabled``.
    """
    if not request.messages:  # templates fail on it with their own wording (or render a bare system prompt)
        raise InvalidRequestError("messages: at least one message is required", param="messages")
    tok = lm.tokenizer
    template = getattr(tok, "chat_template", None) or lm.arch.chat_template
    if not template:
        raise InvalidRequestError(
            f"Model '{lm.name}' has no chat template, so it cannot serve chat requests; use /v1/completions "
            "with a plain prompt.", code="no_chat_template")
    messages = template_messages(request, lm)
    prefill = bool(messages) and messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls")
    kwargs: dict[str, Any] = {}
    if options is not None and "enable_thinking" in options:
        kwargs["enable_thinking"] = options["enable_thinking"]
    elif request.reasoning is not None and request.reasoning.enabled is not None:
        kwargs["enable_thinking"] = request.reasoning.enabled
    tools = template_tools(request)
    if options is not None and not options.get("include_tools", True):
        tools = None
    try:
        text = tok._tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=not prefill,
            continue_final_message=prefill, chat_template=template, **kwargs)
    except InvalidRequestError:
        raise
    except Exception as err:  # jinja raise_exception(...) in templates, or a template bug
        raise InvalidRequestError(f"The chat template of '{lm.name}' rejected this conversation: {err}",
                                  param="messages") from err
    return str(text)


def encode_chat(request: ChatRequest, lm: LoadedModel, options: dict[str, Any] | None = None) -> list[int]:
    """Prompt token ids for a chat request (special tokens come from the template, none are added)."""
    return encode_text(render_chat(request, lm, options), lm)

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(text: str) -> str:
    """``text`` with lone surrogates (legal in JSON's ``\\ud800``, not in UTF-8) replaced by U+FFFD.

    Tokenizers encode UTF-8 and raise on them, which turned such a request into a 500.
    """
    return _LONE_SURROGATE.sub("\ufffd", text)


def encode_text(text: str, lm: LoadedModel) -> list[int]:
    """Token ids of rendered prompt text, without added special tokens."""
    ids = lm.tokenizer.encode(valid_unicode(text), add_special_tokens=False)
    if not ids:
        raise InvalidRequestError("The rendered prompt is empty.", param="messages")
    return list(ids)


def encode_completion(request: CompletionRequest, lm: LoadedModel) -> list[list[int]]:
    """Prompt token ids for each prompt of a text completion (BOS added the way the tokenizer does)."""
    prompts: list[list[int]] = []
    for prompt in request.prompt or [""]:
        if isinstance(prompt, str):
            ids = list(lm.tokenizer.encode(valid_unicode(prompt)))
        else:
            vocab = lm.config.get("vocab_size") or len(lm.tokenizer)
            bad = [t for t in prompt if not 0 <= int(t) < vocab]
            if bad:
                raise InvalidRequestError(f"Prompt token ids {bad[:5]} are outside the vocabulary (0..{vocab - 1}).",
                                          param="prompt")
            ids = [int(t) for t in prompt]
        if not ids:
            bos = lm.tokenizer.bos_token_id
            if bos is None:
                raise InvalidRequestError("The prompt is empty.", param="prompt")
            ids = [bos]
        prompts.append(ids)
    return prompts
