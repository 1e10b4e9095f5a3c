"""Local models for agents: reasoning, tool calls, tool_choice and structured output.

The engine calls three functions (all cheap to import; outlines-core and mlx load on first use):

- ``template_options(request, arch)`` before rendering the prompt: ``enable_thinking`` for families with a
  thinking toggle and whether to pass the tools to the chat template (``tool_choice: none`` hides them).
- ``make_output_parser(request, arch, tokenizer, prompt=...)`` -> an ``OutputParser`` that splits the
  generated text into reasoning, answer text and tool calls in the family's syntax.
- ``make_logits_processors(request, tokenizer, arch=..., prompt=..., max_tokens=...)`` -> mlx-lm logits
  processors: the reasoning budget and the output constraint (``response_format`` json_schema /
  json_object, or a forced tool call for ``tool_choice`` any/tool). Raises ``InvalidRequestError`` (400)
  for an unsupported schema or a ``max_tokens`` too small for the format. Apply these after any
  sampling-parameter processors (logit_bias, penalties), so nothing re-enables a masked token.

Passing ``prompt`` (the rendered prompt text, or its tail) lets both know whether the chat template opened a
reasoning block; ``max_tokens`` (the effective limit) makes the output constraint length-aware.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from higgs.errors import InvalidRequestError
from higgs.messages import ChatRequest

from higgs_mlx.agents._tok import hf_tokenizer

if TYPE_CHECKING:
    from higgs.specs import ArchitectureSpec

    from higgs_mlx.output import OutputParser

__all__ = [
    "family_of",
    "forced_call_regex",
    "make_logits_processors",
    "make_output_parser",
    "output_regex",
    "reasoning_budget",
    "template_options",
    "tools_active",
]

LogitsProcessor = Callable[[Any, Any], Any]

#: Families guessed from a vocabulary, by tokenizer.
_guessed: weakref.WeakKeyDictionary[Any, tuple[tuple[str, str] | None, str | None]] = weakref.WeakKeyDictionary()
#: Prompt probes by request id, so the output parser of a request can ask its processors (see PromptProbe).
_probes: dict[int, Any] = {}


def tools_active(request: ChatRequest) -> bool:
    """The request has tools and ``tool_choice`` is not ``none``."""
    return bool(request.tools) and not (request.tool_choice and request.tool_choice.type == "none")


def _forced_tools(request: ChatRequest) -> list[Any]:
    """The tools a forced call may use (``any``: all; ``tool``: the named one), or [] when not forced."""
    choice = request.tool_choice
    if not request.tools or choice is None or choice.type not in ("any", "tool"):
        return []
    if choice.type == "any":
        return list(request.tools)
    named = [t for t in request.tools if t.name == choice.name]
    if not named:
        raise InvalidRequestError(f"tool_choice names the tool '{choice.name}', which is not in tools.",
                                  param="tool_choice")
    return named


def _structured(request: ChatRequest) -> bool:
    fmt = request.response_format
    return bool(fmt and fmt.type in ("json_object", "json_schema")) or bool(_forced_tools(request))


def reasoning_budget(request: ChatRequest) -> int | None:
    """Reasoning token budget from ``reasoning.budget_tokens`` or ``reasoning.effort`` (None: unlimited)."""
    from higgs_mlx.agents.reasoning import EFFORT_BUDGETS

    opts = request.reasoning
    if opts is None:
        return None
    if opts.enabled is False:
        return 0
    if opts.budget_tokens is not None:
        return max(opts.budget_tokens, 0)
    return EFFORT_BUDGETS.get(opts.effort) if opts.effort else None


def template_options(request: ChatRequest, arch: ArchitectureSpec | None) -> dict[str, Any]:
    """Chat-template decisions for this request.

    Returns a dict with ``include_tools`` (False for ``tool_choice: none``: render without tools) and,
    for families with ``thinking_toggle``, ``enable_thinking`` when the request decides it: False when
    reasoning is disabled, effort is ``minimal``, or the output is constrained (a schema or forced call
    starts at the first answer token); True when reasoning is explicitly enabled.
    """
    options: dict[str, Any] = {"include_tools": tools_active(request)}
    if arch is not None and arch.thinking_toggle:
        opts = request.reasoning
        if (opts and opts.enabled is False) or reasoning_budget(request) == 0 or _structured(request):
            options["enable_thinking"] = False
        elif opts and opts.enabled:
            options["enable_thinking"] = True
    return options


def make_output_parser(request: ChatRequest, arch: ArchitectureSpec | None, tokenizer: Any = None, *,
                       prompt: str | None = None) -> OutputParser:
    """The parser for this request's output: reasoning split (if the family has tags), then tool calls."""
    from higgs_mlx.output import PlainTextParser

    inner: OutputParser = PlainTextParser()
    tags, syntax = family_of(arch, tokenizer)
    if tools_active(request):
        from higgs_mlx.agents.syntaxes import get_syntax
        from higgs_mlx.agents.toolcalls import ToolCallParser

        single = bool(request.tool_choice and request.tool_choice.disable_parallel_tool_use)
        inner = ToolCallParser(get_syntax(syntax), [t.name for t in request.tools], max_calls=1 if single else None)
    if tags:
        from higgs_mlx.agents.reasoning import ReasoningParser, prompt_opens_reasoning

        probe = _probes.get(id(request)) if prompt is None else None
        return ReasoningParser(tags, inner, in_reasoning=prompt_opens_reasoning(prompt, tags), probe=probe)
    return inner


def forced_call_regex(request: ChatRequest, arch: ArchitectureSpec | None) -> str | None:
    """The regex of a valid call for ``tool_choice`` any/tool in the family's syntax, or None."""
    tools = _forced_tools(request)
    if not tools:
        return None
    from higgs_mlx.agents.schema import schema_to_regex
    from higgs_mlx.agents.syntaxes import get_syntax

    return get_syntax(arch.tool_parser if arch else None).forced_regex(tools, schema_to_regex)


def output_regex(request: ChatRequest, arch: ArchitectureSpec | None = None) -> str | None:
    """The regex the answer must match: a forced tool call, else the response format, else None."""
    forced = forced_call_regex(request, arch)
    if forced is not None:
        return forced
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    from higgs_mlx.agents.schema import json_object_regex, schema_to_regex

    if fmt.type == "json_object":
        return json_object_regex()
    if not fmt.json_schema:
        raise InvalidRequestError("response_format json_schema needs a 'schema'.", param="response_format")
    return schema_to_regex(fmt.json_schema)


def _ids(tokenizer: Any, text: str) -> list[int]:
    hf = hf_tokenizer(tokenizer)
    return list(hf.encode(text, add_special_tokens=False))


#: Marker tokens that identify a family's tool syntax when no architecture spec is at hand.
_SYNTAX_TOKENS = (("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"), ("<|python_tag|>", "llama3_json"),
                  ("<｜tool▁calls▁begin｜>", "deepseek"), ("<|tool_call|>", "phi"), ("<|tool_call>", "gemma"))  # noqa: RUF001


#: What a chat template writes for an assistant tool call names the syntax the model was trained to emit,
#: checked in this order (a DeepSeek-R1 distill has a Qwen vocabulary but DeepSeek's template).
_TEMPLATE_MARKERS = (("tool▁calls▁begin", "deepseek"), ("[TOOL_CALLS]", "mistral"),
                     ("<|tool_call>", "gemma"), ("<|tool_call|>", "phi"), ("functools[", "phi"),
                     ("<tool_call>", "hermes"), ("<|python_tag|>", "llama3_json"))


def template_syntax(template: Any) -> str | None:
    """The tool syntax a chat template renders calls in, or None when it shows none."""
    if isinstance(template, dict):  # {"default": ..., "tool_use": ...}
        template = " ".join(str(t) for t in template.values())
    if not isinstance(template, str):
        return None
    return next((name for marker, name in _TEMPLATE_MARKERS if marker in template), None)


def _template_tags(template: Any) -> tuple[str, str] | None:
    """``<think>`` tags when the chat template handles them (a reasoning fine-tune of a plain family)."""
    text = " ".join(str(t) for t in template.values()) if isinstance(template, dict) else template
    if isinstance(text, str) and "<think>" in text and "</think>" in text:
        return ("<think>", "</think>")
    return None


def family_of(arch: ArchitectureSpec | None, tokenizer: Any) -> tuple[tuple[str, str] | None, str | None]:
    """``(reasoning_tags, tool_parser)``: from the architecture spec, except that the tool syntax the
    model's own chat template renders wins (fine-tunes such as Hermes-3-Llama or the DeepSeek-R1 distills
    speak another family's syntax); without a spec, both are guessed from the template and vocabulary."""
    hf = hf_tokenizer(tokenizer)
    template = getattr(hf, "chat_template", None) if hf is not None else None
    rendered = template_syntax(template)
    if arch is not None:
        if rendered is None:
            rendered = template_syntax(arch.chat_template)
        tags = arch.reasoning_tags or _template_tags(template)
        return tags, rendered or arch.tool_parser
    if rendered is not None:
        tags, _ = _guess_from_vocab(hf)
        return tags, rendered
    return _guess_from_vocab(hf)


def _guess_from_vocab(hf: Any) -> tuple[tuple[str, str] | None, str | None]:
    try:
        return _guessed[hf]
    except (KeyError, TypeError):
        pass
    try:
        vocab = hf.get_vocab()  # builds a dict of the whole vocabulary: ~0.5 s for 151k tokens, so cached
    except AttributeError:
        return None, None
    tags = ("<think>", "</think>") if "<think>" in vocab and "</think>" in vocab else None
    syntax = next((name for token, name in _SYNTAX_TOKENS if token in vocab), None)
    with contextlib.suppress(TypeError):
        _guessed[hf] = (tags, syntax)
    return tags, syntax


def make_logits_processors(request: ChatRequest, tokenizer: Any, *, arch: ArchitectureSpec | None = None,
                           prompt: str | None = None, max_tokens: int | None = None) -> list[LogitsProcessor]:
    """mlx-lm logits processors for this request (empty when nothing is constrained).

    Without ``arch`` the family's reasoning tags and tool syntax are guessed from the vocabulary; without
    ``prompt`` the processors tell from the prompt tokens of their first call whether the template opened a
    reasoning block.

    Raises:
        InvalidRequestError: unsupported schema feature, unknown forced tool, or ``max_tokens`` too small.
    """
    from types import SimpleNamespace

    processors: list[LogitsProcessor] = []
    tags, syntax = family_of(arch, tokenizer)
    in_reasoning: bool | None = None
    if prompt is not None:
        from higgs_mlx.agents.reasoning import prompt_opens_reasoning

        in_reasoning = prompt_opens_reasoning(prompt, tags)
    if tags and prompt is None:
        from higgs_mlx.agents.reasoning import PromptProbe

        probe = PromptProbe(_ids(tokenizer, tags[0]), _ids(tokenizer, tags[1]))
        _probes[id(request)] = probe
        weakref.finalize(request, _probes.pop, id(request), None)
        processors.append(probe)
    budget = reasoning_budget(request)
    family = arch if arch is not None else SimpleNamespace(tool_parser=syntax)
    regex = output_regex(request, family)  # type: ignore[arg-type]
    limit = max_tokens if max_tokens is not None else request.max_tokens
    constraint = None
    if regex is not None:
        from higgs_mlx.agents.constrain import RegexConstraint, compile_regex

        compiled = compile_regex(tokenizer, regex)
        reasoning = None
        if tags and in_reasoning is not False:
            lead = r"[ \n]{0,2}" + regex  # "</think>\n\n" spacing; JSON whitespace only, not \s (unicode)

            def lead_index() -> Any:
                return compile_regex(tokenizer, lead)

            close_ids = _ids(tokenizer, tags[1])
            reasoning = (_ids(tokenizer, tags[0]), close_ids, lead_index)
            if budget is None:
                # a template-opened block must close in time for the constrained answer to fit
                need = compiled.distances().get(compiled.index.get_initial_state(), 0)
                budget = max((limit or 4096) - need - len(close_ids) - 4, 0)
        constraint = RegexConstraint(compiled, max_tokens=limit, reasoning=reasoning)
    if tags and budget is not None:
        from higgs_mlx.agents.reasoning import ReasoningBudget

        processors.append(ReasoningBudget(budget, _ids(tokenizer, tags[0]), _ids(tokenizer, tags[1]),
                                          in_reasoning=in_reasoning))
    if constraint is not None:
        processors.append(constraint)
    return processors
