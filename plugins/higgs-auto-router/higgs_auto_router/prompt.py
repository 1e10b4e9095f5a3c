"""What the classifier reads and how its answer is read back.

The prompt follows the layout Arch-Router was trained on (the suggested classifier): the candidate routes
as a JSON list of ``{"name", "description"}`` inside ``<routes>`` tags, the conversation as a JSON list of
``{"role", "content"}`` inside ``<conversation>`` tags, and an answer of the form ``{"route": "NAME"}``,
with ``other`` when no route fits. The answer's fixed opening (``{"route": "``) is written into the prompt,
so the model only generates the name; constrained decoding limits it to exactly the candidate names and
``other`` (``answer_regex``).

Pure Python: token counting is handed in (``TokenCounter``), so this module is testable without a model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from higgs.messages import ChatRequest, ImageBlock, TextBlock, ToolResultBlock, ToolUseBlock

#: The answer for "no route fits" (Arch-Router's word); ``none`` is accepted too when parsing leniently.
OTHER = "other"
NONE_ANSWERS = frozenset({"other", "none"})
#: The opening of the answer, written into the prompt after the assistant turn starts.
ANSWER_PREFIX = '{"route": "'

INSTRUCTION = """
You are a routing assistant that picks the route best suited to a conversation.
The available routes are listed as JSON inside <routes></routes> tags:
<routes>

{routes}

</routes>

<conversation>

{conversation}

</conversation>
"""

ANSWER_FORMAT = """
Decide which route best fits the user's intent in the conversation inside <conversation></conversation> tags.
1. If no route fits the user's latest intent, or that intent has already been fulfilled, answer with the route {"route": "other"}.
2. Compare the user's latest intent with the route descriptions and pick the best match.
3. Answer only with the name of that route, spelled exactly as inside <routes></routes>.

Answer in this JSON format:
{"route": "route_name"}
"""  # noqa: E501 (the instruction reads better unwrapped)


@dataclass(frozen=True)
class Candidate:
    """A route the classifier may pick."""

    name: str
    description: str


class TokenCounter(Protocol):
    """The classifier's tokenizer, as far as trimming needs it."""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens)."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``."""
        ...


def _block_text(block: Any) -> str:
    if isinstance(block, TextBlock):
        return block.text
    if isinstance(block, ToolUseBlock):
        return f"[tool call {block.name}: {json.dumps(block.input, ensure_ascii=False, sort_keys=True)}]"
    if isinstance(block, ToolResultBlock):
        inner = "".join(_block_text(b) for b in block.content)
        return f"[tool result{' (error)' if block.is_error else ''}: {inner}]"
    if isinstance(block, ImageBlock):
        return "[image]"
    return ""  # thinking and unknown blocks say nothing about where the request should go


def conversation_items(request: ChatRequest) -> list[dict[str, str]]:
    """The non-system messages as ``{"role", "content"}`` text items (tool calls and results summarised)."""
    items = []
    for message in request.messages:
        text = "".join(_block_text(b) for b in message.content)
        if text:
            items.append({"role": message.role, "content": text})
    return items


def _item_json(item: dict[str, str]) -> str:
    return json.dumps(item, ensure_ascii=False)


def trim_history(items: Sequence[dict[str, str]], tokens: TokenCounter, budget: int) -> list[dict[str, str]]:
    """The most recent items that fit ``budget`` tokens (as the prompt shows them, JSON-encoded).

    Whole items are kept from the most recent end; when even the latest item does not fit, its content is
    cut from the front so its end (what the user asked last) stays.
    """
    kept: list[dict[str, str]] = []
    left = budget
    for item in reversed(items):
        cost = len(tokens.encode(_item_json(item))) + 1  # + the list separator
        if cost <= left:
            kept.append(item)
            left -= cost
            continue
        if not kept:
            overhead = len(tokens.encode(_item_json({**item, "content": ""}))) + 1
            room = left - overhead
            if room > 0:
                ids = tokens.encode(item["content"])
                kept.append({**item, "content": tokens.decode(ids[-room:])})
        break
    kept.reverse()
    return kept


def build_prompt(candidates: Sequence[Candidate], items: Sequence[dict[str, str]]) -> str:
    """The user message the classifier answers."""
    routes = json.dumps([{"name": c.name, "description": c.description} for c in candidates], ensure_ascii=False)
    conversation = json.dumps(list(items), ensure_ascii=False)
    return INSTRUCTION.format(routes=routes, conversation=conversation) + ANSWER_FORMAT


_REGEX_META = re.compile(r"([.^$*+?{}\[\]\\|()])")


def answers(candidates: Sequence[Candidate]) -> list[str]:
    """Every valid answer: the candidate names, then ``other``."""
    return [*(c.name for c in candidates), OTHER]


def answer_regex(candidates: Sequence[Candidate]) -> str:
    """A regex matching exactly one valid answer (for outlines-core)."""
    return "(" + "|".join(_REGEX_META.sub(r"\\\1", a) for a in answers(candidates)) + ")"


def resolved(answer: str, candidates: Sequence[Candidate]) -> str | None:
    """The route an exact answer names, or None for ``other``/``none``/anything else."""
    names = {c.name for c in candidates}
    return answer if answer in names else None


def parse_answer(text: str, candidates: Sequence[Candidate]) -> str | None:
    """Read a free-text answer leniently: ``NAME"}``, ``{"route": "NAME"}``, ``NAME``, or a name in prose.

    Returns the route name, or None when the answer is ``other``/``none`` or names no candidate.
    """
    names = {c.name: c.name for c in candidates}
    lowered = {c.name.lower(): c.name for c in candidates}
    raw = text.strip()
    try:
        value = json.loads(raw if raw.startswith("{") else ANSWER_PREFIX + raw)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("route"), str):
        raw = value["route"]
    head = raw.strip().strip('"\'`.,:;!}{ \n').strip()
    if head in names:
        return names[head]
    if head.lower() in NONE_ANSWERS:
        return None
    if head.lower() in lowered:
        return lowered[head.lower()]
    # a name mentioned in prose: the earliest, the longest at the same place
    found: list[tuple[int, int, str]] = []
    for name in names:
        match = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", raw, flags=re.IGNORECASE)
        if match:
            found.append((match.start(), -len(name), name))
    return min(found)[2] if found else None
