"""Reasoning: splitting think blocks out of streamed text, and the budget processor that closes them."""

from __future__ import annotations

import itertools
import json

import mlx.core as mx
import pytest
from higgs.messages import ChatRequest, Reasoning, Tool, ToolChoice
from higgs.specs import ArchitectureSpec
from hypothesis import given, settings
from hypothesis import strategies as st

from higgs_mlx.agents import make_output_parser, reasoning_budget, template_options
from higgs_mlx.agents.reasoning import ReasoningBudget, ReasoningParser, ids_open_reasoning
from higgs_mlx.output import PlainTextParser, Segment, TextSegment, ThinkingSegment, ToolArgs, ToolCallStart

TAGS = ("<think>", "</think>")
QWEN3 = ArchitectureSpec(name="qwen3", model_types=("qwen3",), module="mlx_lm.models.qwen3",
                         reasoning_tags=TAGS, tool_parser="hermes", thinking_toggle=True)


def _run(parser, text: str, step: int) -> list[Segment]:
    out: list[Segment] = []
    for i in range(0, len(text), step):
        out += parser.feed(text[i:i + step])
    return out + parser.finish()


def _split(segments: list[Segment]) -> tuple[str, str]:
    thinking = "".join(s.text for s in segments if isinstance(s, ThinkingSegment))
    text = "".join(s.text for s in segments if isinstance(s, TextSegment))
    return thinking, text


@pytest.mark.parametrize("step", [1, 2, 3, 5, 8, 1000])
@pytest.mark.parametrize(("text", "in_reasoning", "thinking", "answer"), [
    ("<think>\nFirst, 2+2.\n</think>\n\nIt is 4.", False, "First, 2+2.", "It is 4."),
    ("  <think>a < b, and </thin is not a tag</think>The end", False, "a < b, and </thin is not a tag", "The end"),
    ("Plain answer, no <think> at the start.", False, "", "Plain answer, no <think> at the start."),
    ("\nreasoning opened by the template\n</think>\n\nAnswer.", True, "reasoning opened by the template", "Answer."),
    ("stray close tag</think>Answer.", False, "", "stray close tagAnswer."),
    ("<think>never closed because max_tokens hit", False, "never closed because max_tokens hit", ""),
    ("<think></think>Empty block.", False, "", "Empty block."),
])
def test_reasoning_split(text, in_reasoning, thinking, answer, step):
    parser = ReasoningParser(TAGS, PlainTextParser(), in_reasoning=in_reasoning)
    assert _split(_run(parser, text, step)) == (thinking, answer)


def test_template_opened_block_from_prompt():
    request = ChatRequest(model="m")
    prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    parser = make_output_parser(request, QWEN3, None, prompt=prompt)
    assert _split(_run(parser, "Hmm.\n</think>\n\nHello!", 2)) == ("Hmm.", "Hello!")
    closed = prompt + "\n</think>\n\n"  # enable_thinking=False renders an empty block
    parser = make_output_parser(request, QWEN3, None, prompt=closed)
    assert _split(_run(parser, "Hello!", 2)) == ("", "Hello!")


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_qwen3_thinking_then_tool_call(step):
    request = ChatRequest(model="m", tools=[Tool(name="get_time", input_schema={"type": "object"})])
    output = ('<think>\nThe user wants the time. I could write <tool_call> here but I am thinking.\n</think>\n\n'
              '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>')
    segments = _run(make_output_parser(request, QWEN3, None), output, step)
    thinking, text = _split(segments)
    assert thinking.startswith("The user wants the time.") and "<tool_call> here" in thinking
    assert text == ""
    starts = [s for s in segments if isinstance(s, ToolCallStart)]
    assert [s.name for s in starts] == ["get_time"]
    assert json.loads("".join(s.text for s in segments if isinstance(s, ToolArgs))) == {"tz": "UTC"}


def test_tool_choice_none_parses_no_calls():
    request = ChatRequest(model="m", tools=[Tool(name="get_time")], tool_choice=ToolChoice(type="none"))
    text = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    assert _split(_run(make_output_parser(request, QWEN3, None), text, 3)) == ("", text)
    assert template_options(request, QWEN3)["include_tools"] is False


def test_template_options_thinking_toggle():
    off = ChatRequest(model="m", reasoning=Reasoning(enabled=False))
    assert template_options(off, QWEN3)["enable_thinking"] is False
    assert template_options(ChatRequest(model="m", reasoning=Reasoning(enabled=True)), QWEN3)["enable_thinking"] is True
    assert "enable_thinking" not in template_options(ChatRequest(model="m"), QWEN3)
    forced = ChatRequest(model="m", tools=[Tool(name="f")], tool_choice=ToolChoice(type="any"))
    assert template_options(forced, QWEN3)["enable_thinking"] is False


def test_budget_from_request():
    assert reasoning_budget(ChatRequest(model="m")) is None
    assert reasoning_budget(ChatRequest(model="m", reasoning=Reasoning(budget_tokens=2048))) == 2048
    assert reasoning_budget(ChatRequest(model="m", reasoning=Reasoning(effort="low"))) == 1024
    assert reasoning_budget(ChatRequest(model="m", reasoning=Reasoning(effort="high"))) is None
    assert reasoning_budget(ChatRequest(model="m", reasoning=Reasoning(enabled=False))) == 0


def test_ids_open_reasoning():
    assert ids_open_reasoning([1, 2, 10, 5], [10], [11, 12])
    assert not ids_open_reasoning([1, 10, 5, 11, 12, 3], [10], [11, 12])
    assert not ids_open_reasoning([1, 2, 3], [10], [11, 12])


def _drive(processor, prompt: list[int], choose, steps: int, vocab: int = 32) -> list[int]:
    """Run ``processor`` like the engine does: prompt first, then one sampled token per step."""
    history = list(prompt)
    out: list[int] = []
    for _ in range(steps):
        logits = processor(mx.array(history), mx.zeros((1, vocab)))
        allowed = [i for i, v in enumerate(logits[0].tolist()) if v != float("-inf")]
        token = choose(allowed)
        out.append(token)
        history.append(token)
    return out


@pytest.mark.parametrize("opened_by_prompt", [True, False])
def test_budget_forces_the_closing_tag(opened_by_prompt):
    open_ids, close_ids = [10], [11, 12]
    prompt = [1, 2, 10] if opened_by_prompt else [1, 2]
    budget = ReasoningBudget(3, open_ids, close_ids)  # tells from the prompt tokens whether it is open
    first = [] if opened_by_prompt else [10]
    script = iter([*first, 5, 6, 7, 8, 9, 9, 9])

    def choose(allowed: list[int]) -> int:
        return allowed[0] if len(allowed) == 1 else next(script)

    out = _drive(budget, prompt, choose, steps=len(first) + 3 + 2 + 2)
    assert out == [*first, 5, 6, 7, 11, 12, 8, 9]  # three reasoning tokens, the forced close, then free


def test_budget_zero_and_natural_close():
    budget = ReasoningBudget(0, [10], [11], in_reasoning=True)
    assert _drive(budget, [1], lambda allowed: allowed[-1], steps=2)[0] == 11
    natural = ReasoningBudget(5, [10], [11], in_reasoning=True)
    script = iter([4, 11, 6, 6, 6, 6, 6, 6])
    out = _drive(natural, [1], lambda allowed: next(script), steps=8)
    assert out == [4, 11, 6, 6, 6, 6, 6, 6]  # closed by the model within budget: never forced


def test_budget_without_reasoning_block_does_nothing():
    budget = ReasoningBudget(1, [10], [11])
    out = _drive(budget, [1], lambda allowed: 7 if len(allowed) > 1 else -1, steps=6)
    assert out == [7] * 6


@settings(max_examples=300, deadline=None)
@given(words=st.lists(st.sampled_from(["<think>", "</think>", "<thi", "nk>", "</", "a", "b c", " ", "\n", "<", ">"]),
                      max_size=20),
       cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=8),
       opened=st.booleans())
def test_reasoning_split_does_not_depend_on_chunking(words, cuts, opened):
    """Streaming safety: any pieces give exactly what the whole text gives."""
    text = "".join(words)
    bounds = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    whole = ReasoningParser(TAGS, PlainTextParser(), in_reasoning=opened)
    streamed = ReasoningParser(TAGS, PlainTextParser(), in_reasoning=opened)
    expected = _split(whole.feed(text) + whole.finish())
    got: list[Segment] = []
    for piece in pieces:
        got += streamed.feed(piece)
    assert _split(got + streamed.finish()) == expected
