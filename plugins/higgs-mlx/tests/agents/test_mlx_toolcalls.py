# ruff: noqa: RUF001  (DeepSeek's tool tags use fullwidth bars)
"""Tool-call parsing per family: the real chat templates render tools, calls and results, and the template's
own rendering of a call, streamed with boundaries in awkward places, parses back into the same calls."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.exceptions import TemplateError
from transformers.utils.chat_template_utils import render_jinja_template

from higgs_mlx.agents.syntaxes import SYNTAXES, get_syntax
from higgs_mlx.agents.toolcalls import ToolCallParser
from higgs_mlx.output import Segment, TextSegment, ToolArgs, ToolCallEnd, ToolCallStart

TEMPLATES = Path(__file__).parent / "templates"

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in a time zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}},
]
NAMES = ["get_weather", "get_time"]
CALLS = [("get_weather", {"city": "Paris, \"FR\"", "days": 3}), ("get_time", {"tz": "Europe/Paris"})]

# template file, tool_parser, the string that ends the assistant's turn in that template, extra kwargs
FAMILIES = [
    ("Qwen-Qwen3-0.6B.jinja", "hermes", "<|im_end|>", {}),
    ("Qwen-Qwen2.5-7B-Instruct.jinja", "hermes", "<|im_end|>", {}),
    ("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja", "hermes", "<|im_end|>", {}),
    ("meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3_json", "<|eot_id|>", {}),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral", "</s>", {}),
    ("Mistral-Small-3.2-24B-Instruct-2506.jinja", "mistral", "</s>", {}),
    # the R1-distill and V3.1 templates render calls and results but not the tool definitions
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "deepseek", "<｜end▁of▁sentence｜>", {"no_definitions": True}),
    ("deepseek-ai-DeepSeek-V3.1.jinja", "deepseek", "<｜end▁of▁sentence｜>", {"no_definitions": True}),
    ("google-gemma-4-31B-it.jinja", "gemma", "<|tool_response>", {}),
]


def _render(template: str, messages: list[dict], **kwargs) -> str:
    return render_jinja_template([messages], tools=TOOLS, chat_template=template, bos_token="<s>",
                                 eos_token="</s>", **kwargs)[0][0]


def _conversation(n_calls: int) -> list[dict]:
    calls = [{"id": f"call{i}ABCD", "type": "function", "function": {"name": name, "arguments": args}}
             for i, (name, args) in enumerate(CALLS[:n_calls])]
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": calls}]


def _model_output(template_file: str, parser: str, end: str, n_calls: int) -> str:
    """What the model writes for ``n_calls`` calls: the template's own rendering of the assistant turn."""
    full = _render((TEMPLATES / template_file).read_text(), _conversation(n_calls))
    marker = min((i for i in (full.rfind(m) for m in get_syntax(parser).markers) if i >= 0), default=-1)
    if parser in ("llama3_json",):
        marker = full.rfind('{"name"', 0, full.rfind(CALLS[0][0]) + 1)
    assert marker >= 0, full[-400:]
    # the first call of the turn: search back from the last marker to the first one of this turn
    first = full.rfind("Weather in Paris?")
    starts = [full.find(m, first) for m in get_syntax(parser).markers]
    starts = [s for s in starts if s >= 0]
    if starts and parser != "llama3_json":
        marker = min(starts)
    out = full[marker:]
    cut = out.find(end)
    return out if cut < 0 else out[:cut]


def _feed(parser: ToolCallParser, pieces: list[str]) -> list[Segment]:
    segments: list[Segment] = []
    for piece in pieces:
        segments += parser.feed(piece)
    return segments + parser.finish()


def _calls(segments: list[Segment]) -> list[tuple[str, dict]]:
    calls: list[tuple[str, dict]] = []
    args = ""
    name = None
    for seg in segments:
        if isinstance(seg, ToolCallStart):
            name, args = seg.name, ""
        elif isinstance(seg, ToolArgs):
            args += seg.text
        elif isinstance(seg, ToolCallEnd):
            calls.append((name, json.loads(args)))
    return calls


def _text(segments: list[Segment]) -> str:
    return "".join(s.text for s in segments if isinstance(s, TextSegment))


def _chunkings(text: str, seed: int = 0) -> list[list[str]]:
    """Every two-way split, one-character pieces, and random piece sizes."""
    out = [[text[:i], text[i:]] for i in range(len(text) + 1)]
    out.append(list(text))
    rng = random.Random(seed)
    for _ in range(20):
        pieces, i = [], 0
        while i < len(text):
            n = rng.randint(1, 6)
            pieces.append(text[i:i + n])
            i += n
        out.append(pieces)
    return out


@pytest.mark.parametrize(("template_file", "parser", "end", "kwargs"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_template_renders_tools_calls_and_results(template_file, parser, end, kwargs):
    template = (TEMPLATES / template_file).read_text()
    messages = [*_conversation(1), {"role": "tool", "tool_call_id": "call0ABCD", "name": "get_weather",
                                    "content": "22 degrees and sunny"},
                {"role": "assistant", "content": "It is 22 degrees and sunny."},
                {"role": "user", "content": "And tomorrow?"}]
    text = _render(template, messages, add_generation_prompt=True)
    assert "get_weather" in text
    assert kwargs.get("no_definitions") or "Current weather for a city" in text  # the tool definition
    assert "Paris" in text  # the call's arguments
    assert "22 degrees and sunny" in text  # the tool result
    # in conversation order: the call, its result, the next question
    assert text.rfind("Paris") < text.find("22 degrees and sunny") < text.find("And tomorrow?")


@pytest.mark.parametrize(("template_file", "parser", "end", "kwargs"), FAMILIES, ids=[f[0] for f in FAMILIES])
@pytest.mark.parametrize("n_calls", [1, 2])
def test_template_call_syntax_parses_streamed(template_file, parser, end, kwargs, n_calls):
    try:
        output = _model_output(template_file, parser, end, n_calls)
    except TemplateError as err:
        if "single tool-call" not in str(err):
            raise
        pytest.skip("this template renders one call per turn")  # Llama 3.1: one call per turn
    expected = CALLS[:n_calls]
    for pieces in _chunkings(output):
        segments = _feed(ToolCallParser(get_syntax(parser), NAMES), pieces)
        assert _calls(segments) == expected, (pieces, segments)
        assert _text(segments).strip() == "", segments


@pytest.mark.parametrize("parser", sorted(SYNTAXES))
def test_text_without_calls_passes_through(parser):
    text = "The weather in Paris is mild: 18 C, no [brackets] or <tags> needed; {braces} too."
    for pieces in _chunkings(text)[::7]:
        segments = _feed(ToolCallParser(get_syntax(parser), NAMES), pieces)
        assert _text(segments) == text
        assert _calls(segments) == []


MALFORMED = {
    "hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par\n</tool_call>',
    "llama3_json": '{"name": "get_weather", "parameters": {"city": }}',
    "mistral": '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city" "Paris"}}]',
    "deepseek": "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{oops}\n```"
                "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "phi": '<|tool_call|>[{"name": "get_weather", "arguments": [1, 2]}]<|/tool_call|>',
    "gemma": "```tool_code\nget_weather(city=\n```",
}


@pytest.mark.parametrize("parser", sorted(MALFORMED))
def test_malformed_call_comes_back_as_text(parser):
    text = MALFORMED[parser]
    for pieces in _chunkings(text)[::5]:
        segments = _feed(ToolCallParser(get_syntax(parser), NAMES), pieces)
        assert _calls(segments) == []
        assert _text(segments) == text


def test_unknown_tool_name_is_text():
    text = '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'
    segments = _feed(ToolCallParser(get_syntax("hermes"), NAMES), [text])
    assert _calls(segments) == [] and _text(segments) == text


def test_unclosed_call_at_end_of_generation():
    """A model stopped (EOS) right after the JSON: the call still counts; a truncated one is text."""
    good = '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}'
    assert _calls(_feed(ToolCallParser(get_syntax("hermes"), NAMES), [good])) == [("get_time", {"tz": "UTC"})]
    cut = '<tool_call>\n{"name": "get_time", "argum'
    segments = _feed(ToolCallParser(get_syntax("hermes"), NAMES), [cut])
    assert _calls(segments) == [] and _text(segments) == cut


def test_text_then_calls_then_text():
    text = ('Let me check.\n\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\nDone.')
    for pieces in _chunkings(text)[::3]:
        segments = _feed(ToolCallParser(get_syntax("hermes"), NAMES), pieces)
        assert _calls(segments) == [("get_time", {"tz": "UTC"}), ("get_weather", {"city": "Oslo"})]
        assert _text(segments) == "Let me check.Done."
        kinds = [type(s).__name__ for s in segments if not (isinstance(s, TextSegment) and not s.text)]
        assert kinds[0] == "TextSegment" and kinds[-1] == "TextSegment"


@pytest.mark.parametrize(("parser", "text", "expected"), [
    ("llama3_json", '<|python_tag|>{"name": "get_time", "parameters": {"tz": "UTC"}}',
     [("get_time", {"tz": "UTC"})]),
    ("llama3_json", '{"name": "get_time", "parameters": {"tz": "UTC"}}; '
                    '{"name": "get_weather", "parameters": {"city": "Rome"}}',
     [("get_time", {"tz": "UTC"}), ("get_weather", {"city": "Rome"})]),
    ("mistral", '[TOOL_CALLS]get_time[ARGS]{"tz": "UTC"}[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}',
     [("get_time", {"tz": "UTC"}), ("get_weather", {"city": "Rome"})]),
    ("phi", '<|tool_call|>[{"name": "get_time", "arguments": {"tz": "UTC"}}]<|/tool_call|>',
     [("get_time", {"tz": "UTC"})]),
    ("phi", 'functools[{"name": "get_time", "arguments": {"tz": "UTC"}}, '
            '{"name": "get_weather", "arguments": {"city": "Rome"}}]',
     [("get_time", {"tz": "UTC"}), ("get_weather", {"city": "Rome"})]),
    ("gemma", '```tool_code\nget_weather(city="Rome", days=2)\n```', [("get_weather", {"city": "Rome", "days": 2})]),
    ("gemma", '[get_time(tz="UTC"), get_weather(city="Rome")]',
     [("get_time", {"tz": "UTC"}), ("get_weather", {"city": "Rome"})]),
    ("gemma", '{"name": "get_time", "parameters": {"tz": "UTC"}}', [("get_time", {"tz": "UTC"})]),
    ("hermes", "<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n"
               "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>",
     [("get_weather", {"city": "Rome", "days": 2})]),
])
def test_other_documented_forms(parser, text, expected):
    for pieces in _chunkings(text)[::4]:
        segments = _feed(ToolCallParser(get_syntax(parser), NAMES), pieces)
        assert _calls(segments) == expected, pieces
        assert _text(segments).strip() == ""


def test_llama_json_answer_that_is_not_a_call_is_text():
    text = '{"answer": 42}'
    segments = _feed(ToolCallParser(get_syntax("llama3_json"), NAMES), list(text))
    assert _calls(segments) == [] and _text(segments) == text


@settings(max_examples=150, deadline=None)
@given(words=st.lists(st.sampled_from([*'ab {}[]<>|/"\\:,;\n_', "<tool_call>", "[TOOL_CALLS]", "<|python_tag|>",
                                       "```tool_code", "<|tool_call>", "functools[", '{"name": "get_time"']),
                      max_size=25),
       cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_any_text_in_any_pieces_never_crashes_and_is_kept(words, cuts):
    """Whatever the model writes, in whatever pieces: no exception, and without a call all text survives."""
    text = "".join(words)
    bounds = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    for name in SYNTAXES:
        segments = _feed(ToolCallParser(get_syntax(name), NAMES), pieces)
        if not any(isinstance(s, ToolCallStart) for s in segments):
            assert _text(segments) == text, (name, pieces, segments)


@pytest.fixture(scope="module")
def byte_bpe(tmp_path_factory: pytest.TempPathFactory):
    """A byte-level BPE tokenizer with the families' markers as special tokens (the engine's test tokenizer)."""
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from higgs_mlx.testing import build_tiny_model

    return load_tokenizer(build_tiny_model("llama", tmp_path_factory.mktemp("tok") / "tiny", seed=3))


@pytest.mark.parametrize(("template_file", "parser", "end", "kwargs"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_token_by_token_through_the_streaming_detokenizer(byte_bpe, template_file, parser, end, kwargs):
    """The engine's path: token ids -> mlx-lm's streaming detokenizer -> one ``feed`` per token."""
    output = _model_output(template_file, parser, end, 1)
    detok = byte_bpe.detokenizer
    detok.reset()
    tool_parser = ToolCallParser(get_syntax(parser), NAMES)
    segments: list[Segment] = []
    for token in byte_bpe.encode(output, add_special_tokens=False):
        detok.add_token(token)
        segments += tool_parser.feed(detok.last_segment)
    detok.finalize()
    segments += tool_parser.feed(detok.last_segment) + tool_parser.finish()
    assert _calls(segments) == CALLS[:1]


def test_mentioning_a_marker_does_not_stall_the_stream():
    parser = ToolCallParser(get_syntax("hermes"), NAMES)
    first = parser.feed("Use the <tool_call> tag to call tools")
    assert _text(first) == "Use the <tool_call> tag to call tools"  # streamed at once, not held to the end
    rest = parser.feed(", like this.") + parser.finish()
    assert _text(first + rest) == "Use the <tool_call> tag to call tools, like this."


def test_parallel_calls_off_keeps_the_first_call():
    text = ('<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    segments = _feed(ToolCallParser(get_syntax("hermes"), NAMES, max_calls=1), list(text))
    assert _calls(segments) == [("get_time", {"tz": "UTC"})] and _text(segments) == ""


@settings(max_examples=200, deadline=None)
@given(words=st.lists(st.sampled_from([
    "<tool_call>", "</tool_call>", '{"name": "get_time", "arguments": {"tz": "UTC"}}', "{", "}", "[", "]", '"',
    "[TOOL_CALLS]", "[ARGS]", "get_time", "<|python_tag|>", ";", "```tool_code", "```", "get_time()", "\n", " ",
    "text", "<", "functools[", "<|tool_call|>", "<|/tool_call|>"]), max_size=14),
       cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=8))
def test_tool_parsing_does_not_depend_on_chunking(words, cuts):
    """Streaming safety: any pieces give the same calls and text as the whole output at once."""
    text = "".join(words)
    bounds = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    for name in SYNTAXES:
        whole = _feed(ToolCallParser(get_syntax(name), NAMES), [text])
        streamed = _feed(ToolCallParser(get_syntax(name), NAMES), pieces)
        assert (_calls(streamed), _text(streamed)) == (_calls(whole), _text(whole)), (name, pieces)


@pytest.mark.parametrize(("template_file", "parser", "end", "kwargs"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_the_template_names_the_syntax(template_file, parser, end, kwargs):
    """The syntax a template renders calls in wins over the architecture's default (fine-tunes differ)."""
    from higgs.specs import ArchitectureSpec

    from higgs_mlx.agents import family_of, template_syntax

    template = (TEMPLATES / template_file).read_text()
    assert template_syntax(template) == parser
    other = ArchitectureSpec(name="x", model_types=("x",), module="m", tool_parser="phi", chat_template=template)
    assert family_of(other, None) == (None, parser)
