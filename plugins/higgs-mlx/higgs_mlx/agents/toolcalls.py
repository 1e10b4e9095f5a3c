"""Streaming tool-call parsing: a model family's call syntax in generated text -> structured calls.

Every family (Hermes/Qwen ``<tool_call>``, Llama 3 JSON, Mistral ``[TOOL_CALLS]``, DeepSeek's tool tags,
Phi, Gemma) is a ``ToolSyntax`` in ``syntaxes.py``: the markers that open a call and a ``parse`` that reads a
buffered call region. ``ToolCallParser`` does the streaming part once for all of them:

- text outside calls streams through, except a trailing piece that could be the start of a marker (held
  back until the next piece decides) and trailing whitespace (dropped when a call follows, so a turn made of
  calls has no stray ``"\\n"`` text blocks);
- a call region is buffered until the syntax says it is complete, then validated: a well-formed call to a
  known tool becomes ``ToolCallStart`` + ``ToolArgs`` (the arguments as one JSON object) + ``ToolCallEnd``;
  anything malformed comes back verbatim as text. Buffering the region (rather than streaming argument
  fragments as they are generated) is what makes "malformed -> text" possible without ever sending a
  client half a call.
"""

from __future__ import annotations

import ast
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from higgs_mlx.agents.jsonscan import INCOMPLETE, INVALID, json_end
from higgs_mlx.output import Segment, TextSegment, ToolArgs, ToolCallEnd, ToolCallStart


@dataclass(frozen=True)
class ParsedCall:
    """One tool call read from model output."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """What ``ToolSyntax.parse`` decided about a buffered region.

    Attributes:
        calls: the calls found, or None when the region is malformed (it then comes back as text).
        consumed: how many characters of the buffer the region used.
    """

    calls: list[ParsedCall] | None
    consumed: int


SchemaRegex = Callable[[dict[str, Any]], str]


class ToolSyntax(ABC):
    """A family's tool-call syntax.

    Attributes:
        name: the ``ArchitectureSpec.tool_parser`` name.
        markers: strings that open a call region anywhere in the output.
        json_at_start: a bare JSON call (or list of calls) may open the answer (Llama 3, Gemma).
    """

    name: str = ""
    markers: tuple[str, ...] = ()
    json_at_start: bool = False

    @abstractmethod
    def parse(self, buf: str, final: bool) -> Outcome | None:
        """Read the call region at the start of ``buf`` (it starts with a marker or, for bare JSON, ``{``/``[``).

        Returns None while the region is incomplete (unless ``final``: no more text will come).
        """

    @abstractmethod
    def forced_regex(self, tools: list[Any], schema_regex: SchemaRegex) -> str:
        """A regex that matches exactly one well-formed call to one of ``tools`` in this syntax.

        ``schema_regex`` turns a JSON schema into a regex (with higgs's schema checks); used for
        ``tool_choice`` ``any``/``tool`` through constrained decoding.
        """


# --------------------------------------------------------------------------------------------------
# Helpers shared by the syntaxes
# --------------------------------------------------------------------------------------------------


def regex_escape(text: str) -> str:
    """Escape ``text`` for outlines-core's (Rust) regex dialect, which rejects Python's escaped spaces."""
    return "".join("\\" + ch if ch in r"\.+*?()|[]{}^$#&-~" else ch for ch in text)


def call_from_json(obj: Any, arg_keys: tuple[str, ...] = ("arguments", "parameters")) -> ParsedCall | None:
    """A call from ``{"name": ..., "arguments": {...}}`` (arguments may also be a JSON string)."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # OpenAI-shaped {"type": "function", "function": {...}}
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    args: Any = {}
    for key in arg_keys:
        if key in obj:
            args = obj[key]
            break
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    return ParsedCall(name, args)


def calls_from_json_text(text: str) -> list[ParsedCall] | None:
    """Calls from a JSON object or list of objects; None when any of them is malformed."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = [call_from_json(item) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def calls_from_python(text: str) -> list[ParsedCall] | None:
    """Calls from pythonic syntax: ``f(a=1)`` or ``[f(a=1), g(b="x")]`` (keyword literals only)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None
    nodes = tree.body.elts if isinstance(tree.body, ast.List) else [tree.body]
    calls: list[ParsedCall] = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args:
            return None
        name = ast.unparse(node.func)
        if not all(part.isidentifier() for part in name.split(".")):
            return None
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
        except (ValueError, SyntaxError):
            return None
        calls.append(ParsedCall(name, args))
    return calls or None


def bare_json_calls(buf: str, final: bool, *, pythonic: bool = False) -> Outcome | None:
    """Read JSON calls at the start of ``buf``, several separated by ``;`` (Llama 3.x's convention)."""
    calls: list[ParsedCall] = []
    pos = 0
    while True:
        end = json_end(buf, pos)
        if end == INCOMPLETE:
            return Outcome(None, len(buf)) if final else None
        if end == INVALID:
            # malformed: only the opening is text, the rest is scanned again (same result however it is chunked)
            return Outcome(None, 0) if not calls else Outcome(calls, pos)
        chunk = buf[pos:end]
        found = calls_from_json_text(chunk)
        if found is None and pythonic:
            found = calls_from_python(chunk)
        if found is None:
            return Outcome(None, end)
        calls += found
        pos = end
        while pos < len(buf) and buf[pos] in " \t\r\n":
            pos += 1
        if pos == len(buf) and not final:
            return None  # a ';' and another call may follow
        if pos < len(buf) and buf[pos] == ";":
            pos += 1
            continue
        return Outcome(calls, pos)


# --------------------------------------------------------------------------------------------------
# The streaming parser
# --------------------------------------------------------------------------------------------------


def new_call_id() -> str:
    """A fresh OpenAI-style call id."""
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallParser:
    """Splits generated answer text into text and tool-call segments for one ``ToolSyntax``.

    Args:
        syntax: the family's syntax.
        tool_names: names of the request's tools; a call to any other name comes back as text.
        max_calls: keep at most this many calls (1 for ``parallel_tool_calls: false`` /
            ``disable_parallel_tool_use``); further well-formed calls are dropped.
    """

    def __init__(self, syntax: ToolSyntax, tool_names: Iterable[str], *, max_calls: int | None = None) -> None:
        self.syntax = syntax
        self.tool_names = frozenset(tool_names)
        self.max_calls = max_calls
        self._buf = ""
        self._in_call = False
        self._bare = False  # the open region is a bare JSON call at the start of the answer
        self._at_start = syntax.json_at_start
        self._held_ws = ""
        self._after_call = False
        self.calls = 0

    # -- public ------------------------------------------------------------------------------------
    def feed(self, text: str) -> list[Segment]:
        """Segments decided by this new piece of answer text."""
        self._buf += text
        return self._run(final=False)

    def finish(self) -> list[Segment]:
        """Flush: parse an unfinished region one last time, then release held text."""
        out = self._run(final=True)
        if self._buf:
            out += self._text(self._buf)
            self._buf = ""
        if self._held_ws and not self._after_call:
            out.append(TextSegment(self._held_ws))
        self._held_ws = ""
        return out

    # -- internals ---------------------------------------------------------------------------------
    def _text(self, text: str) -> list[Segment]:
        """Emit ``text``, holding its trailing whitespace back until we know what follows."""
        if not text:
            return []
        body = text.rstrip(" \t\r\n")
        if not body:
            self._held_ws += text
            return []
        lead = "" if self._after_call else self._held_ws
        if self._after_call:
            body = body.lstrip(" \t\r\n")
        self._after_call = False
        self._held_ws = text[len(text.rstrip(" \t\r\n")):]
        return [TextSegment(lead + body)]

    def _calls(self, calls: list[ParsedCall]) -> list[Segment]:
        out: list[Segment] = []
        if self.max_calls is not None:
            calls = calls[: max(self.max_calls - self.calls, 0)]
        for call in calls:
            out += [ToolCallStart(id=new_call_id(), name=call.name),
                    ToolArgs(json.dumps(call.arguments, ensure_ascii=False)), ToolCallEnd()]
        self.calls += len(calls)
        self._held_ws = ""
        self._after_call = True
        return out

    def _valid(self, calls: list[ParsedCall] | None) -> bool:
        if not calls:
            return False
        return not self.tool_names or all(c.name in self.tool_names for c in calls)

    def _run(self, final: bool) -> list[Segment]:
        out: list[Segment] = []
        while self._buf:
            if self._at_start:
                stripped = self._buf.lstrip(" \t\r\n")
                if not stripped:
                    if final:
                        self._at_start = False
                    break
                self._at_start = False
                if stripped[0] in "{[":
                    self._held_ws += self._buf[: len(self._buf) - len(stripped)]  # text again if no call
                    self._buf = stripped
                    self._in_call = self._bare = True
                    if not self._region(final, out, bare=True):
                        break
                    continue
            if self._in_call:
                if not self._region(final, out, bare=self._bare):
                    break
                continue
            hit = self._find_marker()
            if hit >= 0:
                out += self._text(self._buf[:hit])
                self._buf = self._buf[hit:]
                self._in_call = True
                continue
            keep = 0 if final else self._partial_marker_len()
            out += self._text(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            break
        return out

    def _region(self, final: bool, out: list[Segment], *, bare: bool) -> bool:
        """Try to close the call region at the buffer start; False when it needs more text."""
        if bare:
            outcome = bare_json_calls(self._buf, final, pythonic=self.syntax.name in ("gemma", "pythonic"))
        else:
            outcome = self.syntax.parse(self._buf, final)
        if outcome is None:
            return False
        consumed = max(outcome.consumed, 1)
        region, self._buf = self._buf[:consumed], self._buf[consumed:]
        self._in_call = self._bare = False
        if self._valid(outcome.calls):
            out += self._calls(outcome.calls or [])
        else:
            out += self._text(region)
        return True

    def _find_marker(self) -> int:
        hits = [i for i in (self._buf.find(m) for m in self.syntax.markers) if i >= 0]
        return min(hits) if hits else -1

    def _partial_marker_len(self) -> int:
        """Length of the longest buffer suffix that is a proper prefix of some marker."""
        best = 0
        for marker in self.syntax.markers:
            for n in range(min(len(marker) - 1, len(self._buf)), best, -1):
                if self._buf.endswith(marker[:n]):
                    best = n
                    break
        return best
