"""Reasoning: split ``<think>...</think>`` out of the answer, and close the block when its budget is spent.

``ReasoningParser`` is an ``OutputParser`` that turns the text between the family's reasoning tags into
``ThinkingSegment`` and hands the rest to an inner parser (plain text or tool calls). It copes with:

- a block opened by the chat template (the rendered prompt ends inside ``<think>``): start in reasoning;
- a closing tag without an opening one (a template opened the block but the engine did not pass the
  prompt): the tag is dropped and what follows is the answer;
- tags split across tokens: a piece that could be the start of a tag is held back until the next piece.

Whitespace around the block is trimmed (``<think>\\n...\\n</think>\\n\\n`` -> reasoning ``...``, answer starts
at its first visible character), as the official parsers of Qwen3 and DeepSeek-R1 do.

``ReasoningBudget`` is a logits processor that counts tokens generated inside the block and, once the
budget is spent, forces the closing tag's tokens one by one (masking every other token), so the model goes
on to answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from higgs_mlx.output import OutputParser, Segment, ThinkingSegment

if TYPE_CHECKING:
    import mlx.core as mx

#: Token budgets for ``reasoning.effort`` (OpenAI ``reasoning_effort``); ``high`` means no budget.
EFFORT_BUDGETS: dict[str, int | None] = {"minimal": 0, "low": 1024, "medium": 4096, "high": None}

_WS = " \t\r\n"


def prompt_opens_reasoning(prompt: str | None, tags: tuple[str, str] | None) -> bool:
    """Whether the rendered prompt leaves a reasoning block open (the template wrote ``<think>``)."""
    if not prompt or not tags:
        return False
    return prompt.rfind(tags[0]) > prompt.rfind(tags[1])


def token_list(tokens: Any) -> list[int]:
    """A 1-D mlx array of token ids as Python ints."""
    values: Any = tokens.tolist()
    return [int(t) for t in values]


def _last(seq: list[int], sub: list[int]) -> int:
    """Index of the last occurrence of ``sub`` in ``seq`` (-1 if absent or empty)."""
    if not sub:
        return -1
    for i in range(len(seq) - len(sub), -1, -1):
        if seq[i:i + len(sub)] == sub:
            return i
    return -1


def ids_open_reasoning(prompt: list[int], open_ids: list[int], close_ids: list[int]) -> bool:
    """Whether prompt token ids leave a reasoning block open (the template wrote the opening tag)."""
    return _last(prompt, open_ids) > _last(prompt, close_ids)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class PromptProbe:
    """A logits processor that changes nothing: it records, from the prompt tokens of its first call,
    whether the chat template left a reasoning block open. The output parser consults it when the engine
    did not pass the rendered prompt (the first call always happens before the first token is parsed)."""

    def __init__(self, open_ids: list[int], close_ids: list[int]) -> None:
        self.open_ids = open_ids
        self.close_ids = close_ids
        self.in_reasoning: bool | None = None

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        """Look at the prompt once; pass the logits through."""
        if self.in_reasoning is None:
            prompt = token_list(tokens[-4096:]) if int(tokens.size) else []
            self.in_reasoning = ids_open_reasoning(prompt, self.open_ids, self.close_ids)
        return logits


class ReasoningParser:
    """Splits reasoning from the answer; the answer goes through ``inner``.

    Args:
        tags: the family's ``(open, close)`` reasoning tags.
        inner: the parser for answer text (``PlainTextParser`` or a ``ToolCallParser``).
        in_reasoning: the prompt already opened the block.
        probe: consulted at the first piece of text when ``in_reasoning`` is unknown (see ``PromptProbe``).
    """

    def __init__(self, tags: tuple[str, str], inner: OutputParser, *, in_reasoning: bool = False,
                 probe: PromptProbe | None = None) -> None:
        self.open_tag, self.close_tag = tags
        self.inner = inner
        self.probe = probe
        self._state = "thinking" if in_reasoning else "start"
        self._buf = ""
        self._think_ws = ""  # trailing whitespace of the reasoning, dropped if the block closes next
        self._think_started = False
        self._answer_started = False
        self.reasoning_seen = in_reasoning

    def feed(self, text: str) -> list[Segment]:
        """Segments for a new piece of generated text."""
        if self.probe is not None:
            if self.probe.in_reasoning and self._state == "start":
                self._state = "thinking"
                self.reasoning_seen = True
            self.probe = None
        self._buf += text
        return self._run(final=False)

    def finish(self) -> list[Segment]:
        """Flush held text: an unclosed block stays reasoning; the inner parser is flushed last."""
        out = self._run(final=True)
        return out + self.inner.finish()

    # -- internals ---------------------------------------------------------------------------------
    def _thinking(self, text: str) -> list[Segment]:
        if not self._think_started:
            text = text.lstrip(_WS)
        if not text:
            return []
        body = text.rstrip(_WS)
        if not body:
            self._think_ws += text
            return []
        self._think_started = True
        out: list[Segment] = [ThinkingSegment(self._think_ws + body)]
        self._think_ws = text[len(body):]
        return out

    def _answer(self, text: str) -> list[Segment]:
        if not self._answer_started:
            text = text.lstrip(_WS)
            if not text:
                return []
            self._answer_started = True
        return self.inner.feed(text)

    def _run(self, final: bool) -> list[Segment]:
        out: list[Segment] = []
        while True:
            if self._state == "start":
                stripped = self._buf.lstrip(_WS)
                if stripped.startswith(self.open_tag):
                    self._buf = stripped[len(self.open_tag):]
                    self._state = "thinking"
                    self.reasoning_seen = True
                    continue
                if not final and (not stripped or self.open_tag.startswith(stripped)):
                    return out  # could still become the open tag
                self._state = "answer"
                continue
            if self._state == "thinking":
                at = self._buf.find(self.close_tag)
                if at >= 0:
                    out += self._thinking(self._buf[:at])
                    self._think_ws = ""
                    self._buf = self._buf[at + len(self.close_tag):]
                    self._state = "answer"
                    continue
                keep = 0 if final else _partial_suffix(self._buf, self.close_tag)
                out += self._thinking(self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                return out
            # answer: drop a stray closing tag (block opened by a template we were not told about)
            at = self._buf.find(self.close_tag) if not self.reasoning_seen else -1
            if at >= 0:
                out += self._answer(self._buf[:at])
                self._buf = self._buf[at + len(self.close_tag):]
                self.reasoning_seen = True
                continue
            keep = 0 if final or self.reasoning_seen else _partial_suffix(self._buf, self.close_tag)
            out += self._answer(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            return out


class ReasoningBudget:
    """Logits processor: after ``budget`` reasoning tokens, force the closing tag's tokens.

    Args:
        budget: reasoning tokens allowed (0 closes the block at once).
        open_ids: token ids of the opening tag; close_ids: of the closing tag.
        in_reasoning: the prompt already opened the block; None: tell from the prompt tokens of the first call.
    """

    def __init__(self, budget: int, open_ids: list[int], close_ids: list[int], *,
                 in_reasoning: bool | None = None) -> None:
        self.budget = budget
        self.open_ids = open_ids
        self.close_ids = close_ids
        self.in_reasoning = in_reasoning
        self.done = False
        self.spent = 0
        self._seen: int | None = None
        self._recent: list[int] = []
        self._generated = 0
        self._forcing = 0  # index into close_ids of the next forced token, when > 0 or forcing started
        self._force = False

    def _observe(self, new: list[int]) -> None:
        for tok in new:
            self._generated += 1
            self._recent = [*self._recent, tok][-max(len(self.open_ids), len(self.close_ids), 1):]
            if self._force:
                self._forcing += 1
                if self._forcing >= len(self.close_ids):
                    self._force, self.done, self.in_reasoning = False, True, False
                continue
            if not self.in_reasoning:
                if self.open_ids and self._recent[-len(self.open_ids):] == self.open_ids and self.spent == 0:
                    self.in_reasoning = True
                elif self._generated > len(self.open_ids) + 2:
                    self.done = True  # the answer started without a reasoning block
                continue
            if self.close_ids and self._recent[-len(self.close_ids):] == self.close_ids:
                self.in_reasoning, self.done = False, True
                continue
            self.spent += 1

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        """Mask everything but the next closing-tag token once the budget is spent."""
        if self._seen is None:
            self._seen = int(tokens.size)
            if self.in_reasoning is None:
                prompt = token_list(tokens[-4096:]) if self._seen else []
                self.in_reasoning = ids_open_reasoning(prompt, self.open_ids, self.close_ids)
        elif not self.done:
            n = int(tokens.size)
            if n > self._seen:
                self._observe(token_list(tokens[self._seen:]))
            self._seen = n
        if self.done:
            return logits
        if self.in_reasoning and not self._force and self.spent >= self.budget:
            self._force, self._forcing = True, 0
        if not self._force:
            return logits
        masked: mx.array = _only(logits, self.close_ids[self._forcing])
        return masked


def _only(logits: Any, token: int) -> Any:
    """``logits`` with every entry but ``token`` set to -inf."""
    import mlx.core as mx

    keep = mx.arange(logits.shape[-1]) == token
    return mx.where(keep, logits, mx.array(-float("inf"), dtype=logits.dtype))
