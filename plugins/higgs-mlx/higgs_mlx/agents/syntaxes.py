"""The tool-call syntaxes of the model families, by ``ArchitectureSpec.tool_parser`` name.

Each reads its family's call markup (see the family's chat template) and can produce a regex for a forced
call. Sources: Qwen2.5/Qwen3 and Hermes templates (``<tool_call>``), Llama 3.1-3.3 templates (JSON with
``"parameters"``, ``<|python_tag|>``), Mistral v3 and v11+ tokenizers (``[TOOL_CALLS] [...]`` and
``[TOOL_CALLS]name[ARGS]{...}``), DeepSeek V3/R1 and V3.1 templates, Phi-4-mini (``<|tool_call|>`` and
``functools[...]``), Gemma 3 (no native tokens: Google's documented ```` ```tool_code ```` pythonic calls,
or bare JSON).
"""

from __future__ import annotations

import json
import re
from typing import Any

from higgs_mlx.agents.jsonscan import INCOMPLETE, INVALID, json_end
from higgs_mlx.agents.toolcalls import (
    Outcome,
    ParsedCall,
    SchemaRegex,
    ToolSyntax,
    bare_json_calls,
    call_from_json,
    calls_from_json_text,
    calls_from_python,
    regex_escape,
)


def _wrapper_schema(tools: list[Any], args_key: str) -> dict[str, Any]:
    """``{"name": <const>, args_key: <the tool's schema>}`` for each tool, as one ``anyOf``."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, args_key: tool.input_schema or {"type": "object"}},
            "required": ["name", args_key],
        }
        for tool in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _between(buf: str, start: str, end: str, final: bool) -> tuple[str, int] | None:
    """The body between ``start`` (at buf[0]) and ``end``, and the consumed length; None if incomplete."""
    stop = buf.find(end, len(start))
    if stop < 0:
        return (buf[len(start):], len(buf)) if final else None
    return buf[len(start):stop], stop + len(end)


def _cannot_open(buf: str, marker: str, openings: tuple[str, ...]) -> bool:
    """The region's body already shows it cannot be a call: the marker is then given back as text at once,
    so a model that merely mentions ``<tool_call>`` keeps streaming instead of being buffered to the end
    (decided from the body's first characters only, so the result never depends on chunking)."""
    body = buf[len(marker):].lstrip()
    return bool(body) and not any(o.startswith(body[:len(o)]) for o in openings)


class HermesSyntax(ToolSyntax):
    """Qwen2.5 / Qwen3 / Hermes: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.

    Also reads Qwen3-Coder's XML body (``<function=NAME><parameter=P>value</parameter></function>``).
    """

    name = "hermes"
    markers = ("<tool_call>",)
    _xml_fn = re.compile(r"<function=([^>\s]+)>(.*?)(?:</function>|$)", re.S)
    _xml_param = re.compile(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", re.S)

    def parse(self, buf: str, final: bool) -> Outcome | None:
        if _cannot_open(buf, "<tool_call>", ("{", "<function=")):
            return Outcome(None, len("<tool_call>"))
        found = _between(buf, "<tool_call>", "</tool_call>", final)
        if found is None:
            return None
        body, consumed = found
        body = body.strip()
        if body.startswith("<function="):
            return Outcome(self._xml(body), consumed)
        return Outcome(calls_from_json_text(body), consumed)

    def _xml(self, body: str) -> list[ParsedCall] | None:
        calls = []
        for fn in self._xml_fn.finditer(body):
            args: dict[str, Any] = {}
            for param in self._xml_param.finditer(fn.group(2)):
                raw = param.group(2)
                try:
                    args[param.group(1)] = json.loads(raw)
                except json.JSONDecodeError:
                    args[param.group(1)] = raw
            calls.append(ParsedCall(fn.group(1), args))
        return calls or None

    def forced_regex(self, tools: list[Any], schema_regex: SchemaRegex) -> str:
        return "<tool_call>\n" + schema_regex(_wrapper_schema(tools, "arguments")) + "\n</tool_call>"


class Llama3JsonSyntax(ToolSyntax):
    """Llama 3.1-3.3: the answer is ``{"name": ..., "parameters": {...}}`` (``;`` between several calls),
    optionally after ``<|python_tag|>``."""

    name = "llama3_json"
    markers = ("<|python_tag|>",)
    json_at_start = True

    def parse(self, buf: str, final: bool) -> Outcome | None:
        tag = self.markers[0]
        outcome = bare_json_calls(buf[len(tag):], final)
        if outcome is None:
            return None
        return Outcome(outcome.calls, outcome.consumed + len(tag))

    def forced_regex(self, tools: list[Any], schema_regex: SchemaRegex) -> str:
        return schema_regex(_wrapper_schema(tools, "parameters"))


class MistralSyntax(ToolSyntax):
    """Mistral: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}]`` (v3) or ``[TOOL_CALLS]name[ARGS]{...}``
    (v11+ tokenizers, one marker per call)."""

    name = "mistral"
    markers = ("[TOOL_CALLS]",)
    _name = re.compile(r"[A-Za-z0-9_.\-]{1,128}")

    def parse(self, buf: str, final: bool) -> Outcome | None:
        start = len(self.markers[0])
        rest = buf[start:].lstrip()
        if not rest:
            return Outcome(None, len(buf)) if final else None
        skip = len(buf) - len(rest)
        if rest[0] in "[{":
            end = json_end(buf, skip)
            if end == INCOMPLETE:
                return Outcome(None, len(buf)) if final else None
            if end == INVALID:  # only the marker is text; what follows is scanned again
                return Outcome(None, start)
            return Outcome(calls_from_json_text(buf[skip:end]), end)
        args_at = buf.find("[ARGS]", skip)
        if args_at < 0:
            head = buf[skip:].split("[CALL_ID]", 1)[0]
            for n in range(min(len(head), 8), 0, -1):  # a partial "[ARGS]" / "[CALL_ID]" at the end
                if "[ARGS]".startswith(head[-n:]) or "[CALL_ID]".startswith(head[-n:]):
                    head = head[:-n]
                    break
            if final or not (head == "" or self._name.fullmatch(head)):
                return Outcome(None, start)
            return None
        name = buf[skip:args_at].strip()
        if "[CALL_ID]" in name:
            name = name.split("[CALL_ID]", 1)[0].strip()
        end = json_end(buf, args_at + len("[ARGS]"))
        if end == INCOMPLETE:
            return Outcome(None, len(buf)) if final else None
        if end == INVALID or not self._name.fullmatch(name):
            return Outcome(None, start if end == INVALID else end)
        call = call_from_json({"name": name, "arguments": buf[args_at + len("[ARGS]"):end]})
        return Outcome([call] if call else None, end)

    def forced_regex(self, tools: list[Any], schema_regex: SchemaRegex) -> str:
        return regex_escape("[TOOL_CALLS][") + schema_regex(_wrapper_schema(tools, "arguments")) + regex_escape("]")


_DS_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"  # noqa: RUF001
_DS_CALLS_END = "<｜tool▁calls▁end｜>"  # noqa: RUF001
_DS_CALL_BEGIN = "<｜tool▁call▁begin｜>"  # noqa: RUF001
_DS_CALL_END = "<｜tool▁call▁end｜>"  # noqa: RUF001
_DS_SEP = "<｜tool▁sep｜>"  # noqa: RUF001


class DeepSeekSyntax(ToolSyntax):
    """DeepSeek V3/R1 and V3.1 tool tags (fullwidth bars and U+2581 in the tag names, see the module's
    ``_DS_*`` constants): calls-begin, then per call call-begin ``function`` sep ``NAME`` + a fenced JSON
    block (V3/R1) or ``NAME`` sep ``{...}`` (V3.1), call-end, and calls-end."""

    name = "deepseek"
    markers = (_DS_CALLS_BEGIN, _DS_CALL_BEGIN)
    _call = re.compile(re.escape(_DS_CALL_BEGIN) + "(.*?)" + re.escape(_DS_CALL_END), re.S)

    def parse(self, buf: str, final: bool) -> Outcome | None:
        if buf.startswith(_DS_CALLS_BEGIN):
            found = _between(buf, _DS_CALLS_BEGIN, _DS_CALLS_END, final)
            if found is None:
                return None
            body, consumed = found
        else:
            found = _between(buf, _DS_CALL_BEGIN, _DS_CALL_END, final)
            if found is None:
                return None
            body, consumed = _DS_CALL_BEGIN + found[0] + _DS_CALL_END, found[1]
        calls = [self._one(m.group(1)) for m in self._call.finditer(body)]
        if not calls or any(c is None for c in calls):
            return Outcome(None, consumed)
        return Outcome([c for c in calls if c is not None], consumed)

    @staticmethod
    def _one(body: str) -> ParsedCall | None:
        if _DS_SEP not in body:
            return None
        left, right = body.split(_DS_SEP, 1)
        left, right = left.strip(), right.strip()
        if right.startswith("{") or not right:
            name, args = left, right
        else:  # V3/R1: the left side is the call type, the name opens the right side
            name, _, args = right.partition("\n")
            args = args.strip()
            if args.startswith("```"):
                args = args.removeprefix("```json").removeprefix("```").removesuffix("```").strip()
        return call_from_json({"name": name.strip(), "arguments": args or "{}"})

    def forced_regex(self, tools: list[Any], schema_regex: SchemaRegex) -> str:
        options = [
            regex_escape(f"{_DS_CALLS_BEGIN}{_DS_CALL_BEGIN}function{_DS_SEP}{tool.name}\n```json\n")
            + schema_regex(tool.input_schema or {"type": "object"})
            + regex_escape(f"\n```{_DS_CALL_END}{_DS_CALLS_END}")
            for tool in tools
        ]
        return "(" + "|".join(f"({o})" for o in options) + ")"


class PhiSyntax(ToolSyntax):
    """Phi-4-mini: ``<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>`` or ``functools[...]``."""

    name = "phi"
    markers = ("<|tool_call|>", "functools[")

    def parse(self, buf: str, final: bool) -> Outcome | None:
        if buf.startswith("functools["):
            end = json_end(buf, len("functools"))
            if end == INCOMPLETE:
                return Outcome(None, len(buf)) if final else None
            if end == INVALID:
                return Outcome(None, len("functools["))
            return Outcome(calls_from_json_text(buf[len("functools"):end]), end)
        if _cannot_open(buf, "<|tool_call|>", ("[", "{")):
            return Outcome(None, len("<|tool_call|>"))
        found = _between(buf, "<|tool_call|>", "<|/tool_call|>", final)
        if found is None:
            return None
        body, consumed = found
        return Outcome(calls_from_json_text(body.strip()), consumed)

    def forced_regex(self, tools: list[Any], schema_regex: SchemaRegex) -> str:
        return (regex_escape("<|tool_call|>[") + schema_regex(_wrapper_schema(tools, "arguments"))
                + regex_escape("]<|/tool_call|>"))


_GEMMA4_QUOTE = '<|"|>'
_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(?=\s*:)")


def gemma4_arguments(text: str) -> dict[str, Any] | None:
    """Gemma 4's argument notation (``{city:<|"|>Paris<|"|>,days:3}``) as a dict, or None if malformed."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith(_GEMMA4_QUOTE, i):
            j = text.find(_GEMMA4_QUOTE, i + len(_GEMMA4_QUOTE))
            if j < 0:
                return None
            out.append(json.dumps(text[i + len(_GEMMA4_QUOTE):j]))
            i = j + len(_GEMMA4_QUOTE)
            continue
        key = _BARE_KEY.match(text, i)
        if key and "".join(out).rstrip()[-1:] in ("{", ","):
            out.append(json.dumps(key.group()))
            i = key.end()
            continue
        out.append(text[i])
        i += 1
    try:
        value = json.loads("".join(out))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class GemmaSyntax(ToolSyntax):
    """Gemma. Gemma 4: ``<|tool_call>call:NAME{key:<|"|>text<|"|>,n:3}<tool_call|>``. Gemma 3 has no tool
    tokens: Google's documented ```` ```tool_code\nf(a=1)\n``` ```` pythonic calls, or a bare JSON /
    pythonic-list call opening the answer (``{"name": ..., "parameters": {...}}``, ``[f(a=1)]``)."""

    name = "gemma"
    markers = ("<|tool_call>", "```tool_code")
    json_at_start = True

    def parse(self, buf: str, final: bool) -> Outcome | None:
        if buf.startswith("<|tool_call>"):
            found = _between(buf, "<|tool_call>", "<tool_call|>", final)
            if found is None:
                return None
            body, consumed = found
            body = body.strip()
            if not body.startswith("call:") or "{" not in body:
                return Outcome(None, consumed)
            name, brace, rest = body[len("call:"):].partition("{")
            args = gemma4_arguments(brace + rest)
            ok = args is not None and re.fullmatch(r"[A-Za-z0-9_.\-]+", name.strip())
            return Outcome([ParsedCall(name.strip(), args or {})] if ok else None, consumed)
        stop = buf.find("```", len(self.markers[1]))
        if stop < 0:
            if not final:
                return None
            stop = len(buf)
        body = buf[len(self.markers[1]):stop].strip()
        consumed = min(stop + 3, len(buf))
        calls = calls_from_python(body) or calls_from_json_text(body)
        return Outcome(calls, consumed)

    def forced_regex(self, tools: list[Any], schema_regex: SchemaRegex) -> str:
        return schema_regex(_wrapper_schema(tools, "parameters"))


SYNTAXES: dict[str, type[ToolSyntax]] = {
    cls.name: cls for cls in (HermesSyntax, Llama3JsonSyntax, MistralSyntax, DeepSeekSyntax, PhiSyntax, GemmaSyntax)
}
#: Families whose architecture names no syntax get Hermes, the most widely fine-tuned convention.
DEFAULT_SYNTAX = "hermes"


def get_syntax(name: str | None) -> ToolSyntax:
    """The syntax registered as ``name`` (``DEFAULT_SYNTAX`` for None or an unknown name)."""
    return SYNTAXES.get(name or DEFAULT_SYNTAX, SYNTAXES[DEFAULT_SYNTAX])()


__all__ = ["DEFAULT_SYNTAX", "SYNTAXES", "bare_json_calls", "get_syntax"]
