"""A scripted model through the real engine and HTTP API: the tiny random-weight model is forced (with the
constrained-decoding machinery itself) to write a Qwen3-style answer - reasoning, then two tool calls - and
the official SDKs must read reasoning + structured calls, streamed and not. The tiny model uses the real
Qwen3 chat template, so the follow-up turn with tool results renders through it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from higgs.hookspecs import hookimpl
from higgs.specs import ArchitectureSpec
from higgs.testing import build_app, serve_in_thread

import higgs_mlx
import higgs_mlx.agents as agents
from higgs_mlx.agents.toolcalls import regex_escape
from higgs_mlx.testing import build_tiny_model

QWEN3_TEMPLATE = (Path(__file__).parent / "templates" / "Qwen-Qwen3-0.6B.jinja").read_text()
ARCH = ArchitectureSpec(name="qwen3", model_types=("llama",), module="mlx_lm.models.llama",
                        reasoning_tags=("<think>", "</think>"), tool_parser="hermes", thinking_toggle=True)
SCRIPT = ('<think>\nThe user wants weather and time, so I call both tools.\n</think>\n\n'
          '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>\n'
          '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>')
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone", "parameters": {
        "type": "object", "properties": {"tz": {"type": "string"}}}}},
]
EXPECTED = [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {"tz": "CET"})]
MESSAGES = [{"role": "user", "content": "Weather and time in Paris?"}]


class _Arch:
    @hookimpl
    def higgs_architectures(self) -> list[ArchitectureSpec]:
        return [ARCH]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = build_tiny_model("llama", tmp_path_factory.mktemp("scripted") / "qwen3ish", seed=21,
                            chat_template=QWEN3_TEMPLATE)
    app = build_app({"models": [{"path": str(path), "name": "scripted"}]},
                    plugins=[("mlx", higgs_mlx), ("test-arch-qwen3ish", _Arch())])
    with serve_in_thread(app, timeout=180) as url:
        yield url


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request's output is constrained to exactly ``SCRIPT`` (then EOS)."""
    monkeypatch.setattr(agents, "output_regex", lambda request, arch=None: regex_escape(SCRIPT))


@pytest.fixture
def oai(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def claude(server: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server, api_key="unused", max_retries=0)


def test_openai_reasoning_and_parallel_tool_calls(scripted, oai):
    reply = oai.chat.completions.create(model="scripted", messages=MESSAGES, tools=TOOLS, max_tokens=400)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.reasoning_content == "The user wants weather and time, so I call both tools."
    assert not choice.message.content
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert calls == EXPECTED
    assert len({c.id for c in choice.message.tool_calls}) == 2

    # next turn: the calls and their results go back through the real Qwen3 template
    follow = [*MESSAGES, choice.message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": choice.message.tool_calls[0].id, "content": "18 C, cloudy"},
              {"role": "tool", "tool_call_id": choice.message.tool_calls[1].id, "content": "14:05"}]
    again = oai.chat.completions.create(model="scripted", messages=follow, tools=TOOLS, max_tokens=400)
    assert again.choices[0].finish_reason == "tool_calls"


def test_openai_streamed(scripted, oai):
    stream = oai.chat.completions.create(model="scripted", messages=MESSAGES, tools=TOOLS, max_tokens=400,
                                         stream=True)
    reasoning, content, finish = "", "", None
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"name": "", "args": ""})
            entry["name"] += call.function.name or ""
            entry["args"] += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert reasoning == "The user wants weather and time, so I call both tools."
    assert content == "" and finish == "tool_calls"
    assert [(calls[i]["name"], json.loads(calls[i]["args"])) for i in sorted(calls)] == EXPECTED


def test_anthropic_thinking_and_tool_use_blocks(scripted, claude):
    tools = [{"name": t["function"]["name"], "description": t["function"]["description"],
              "input_schema": t["function"]["parameters"]} for t in TOOLS]
    message = claude.messages.create(model="scripted", max_tokens=400, messages=MESSAGES, tools=tools)
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["thinking", "tool_use", "tool_use"]
    assert message.content[0].thinking.startswith("The user wants")
    assert [(b.name, b.input) for b in message.content[1:]] == EXPECTED
    with claude.messages.stream(model="scripted", max_tokens=400, messages=MESSAGES, tools=tools) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "thinking" in kinds and "input_json" in kinds
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == EXPECTED

    follow = [*MESSAGES, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
              {"role": "user", "content": [
                  {"type": "tool_result", "tool_use_id": message.content[1].id, "content": "18 C"},
                  {"type": "tool_result", "tool_use_id": message.content[2].id, "content": "14:05"}]}]
    again = claude.messages.create(model="scripted", max_tokens=400, messages=follow, tools=tools)
    assert again.stop_reason == "tool_use"


def test_tool_choice_none_leaves_markup_as_text(scripted, oai):
    reply = oai.chat.completions.create(model="scripted", messages=MESSAGES, tools=TOOLS, tool_choice="none",
                                        max_tokens=400)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert "<tool_call>" in choice.message.content
