"""End to end through higgs's HTTP API with the official SDKs: a tiny random-weight model served by the real
MLX provider, whose output is steered only by higgs's constraints (structured output, forced tool calls) and
reasoning handling (a template that opens <think>, a thinking budget)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import jsonschema
import openai
import pytest
from higgs.hookspecs import hookimpl
from higgs.specs import ArchitectureSpec
from higgs.testing import build_app, serve_in_thread

import higgs_mlx
from higgs_mlx.testing import CHATML_TEMPLATE, build_tiny_model

TAGS = ("<think>", "</think>")
# Qwen3-style: the template opens the reasoning block unless enable_thinking is false
THINKING_TEMPLATE = CHATML_TEMPLATE.replace(
    "{%- if enable_thinking is defined and enable_thinking is false %}",
    "{%- if not (enable_thinking is defined and enable_thinking is false) %}{{- '<think>\\n' }}{%- endif %}"
    "{%- if enable_thinking is defined and enable_thinking is false %}")
ARCH = ArchitectureSpec(name="llama", model_types=("llama",), module="mlx_lm.models.llama", reasoning_tags=TAGS,
                        tool_parser="hermes", thinking_toggle=True)

SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 1, "maximum": 7},
    "units": {"enum": ["C", "F"]}}, "required": ["city", "days", "units"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                            "parameters": SCHEMA}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Time in a zone", "parameters": {
    "type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}}, "required": ["tz"]}}}


class _Arch:
    @hookimpl
    def higgs_architectures(self) -> list[ArchitectureSpec]:
        return [ARCH]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("agents-http")
    plain = build_tiny_model("llama", root / "plain", seed=11)
    thinking = build_tiny_model("llama", root / "thinking", seed=12, chat_template=THINKING_TEMPLATE)
    settings = {"models": [{"path": str(plain), "name": "tiny"}, {"path": str(thinking), "name": "thinker"}]}
    app = build_app(settings, plugins=[("mlx", higgs_mlx), ("test-arch-llama-agents", _Arch())])
    with serve_in_thread(app, timeout=180) as url:
        yield url


@pytest.fixture
def oai(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def claude(server: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server, api_key="unused", max_retries=0)


MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}


@pytest.mark.parametrize("model", ["tiny", "thinker"])
def test_openai_json_schema(oai, model):
    for seed in range(3):
        reply = oai.chat.completions.create(model=model, messages=MESSAGES, response_format=FORMAT, max_tokens=60,
                                            temperature=1.0, seed=seed)
        jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)
        assert reply.choices[0].finish_reason == "stop"


def test_openai_json_schema_streamed_from_the_first_token(oai):
    stream = oai.chat.completions.create(model="tiny", messages=MESSAGES, response_format=FORMAT, max_tokens=60,
                                         temperature=1.0, stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert pieces[0].startswith("{")
    jsonschema.validate(json.loads("".join(pieces)), SCHEMA)


def test_openai_json_object(oai):
    reply = oai.chat.completions.create(model="tiny", messages=MESSAGES, response_format={"type": "json_object"},
                                        max_tokens=40, temperature=1.0)
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_openai_unsupported_schema_is_400(oai):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}}}
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="tiny", messages=MESSAGES, response_format=bad, max_tokens=20)
    assert "uniqueItems" in str(info.value)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_openai_forced_tool_call(oai, choice):
    reply = oai.chat.completions.create(model="tiny", messages=MESSAGES, tools=[WEATHER, TIME], tool_choice=choice,
                                        max_tokens=80, temperature=1.0)
    out = reply.choices[0]
    assert out.finish_reason == "tool_calls"
    (call,) = out.message.tool_calls
    assert call.id and call.type == "function"
    if isinstance(choice, dict):
        assert call.function.name == "get_time"
    schema = {"get_weather": SCHEMA, "get_time": TIME["function"]["parameters"]}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), schema)


def test_openai_forced_tool_call_streamed(oai):
    stream = oai.chat.completions.create(model="tiny", messages=MESSAGES, tools=[WEATHER], tool_choice="required",
                                         max_tokens=80, temperature=1.0, stream=True)
    name, args, finish = None, "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        for call in chunk.choices[0].delta.tool_calls or []:
            name = call.function.name or name
            args += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather" and finish == "tool_calls"
    jsonschema.validate(json.loads(args), SCHEMA)


def test_anthropic_forced_tool_use(claude):
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": SCHEMA}]
    message = claude.messages.create(model="tiny", max_tokens=80, messages=MESSAGES, tools=tools,
                                     tool_choice={"type": "tool", "name": "get_weather"})
    assert message.stop_reason == "tool_use"
    (block,) = [b for b in message.content if b.type == "tool_use"]
    assert block.name == "get_weather" and block.id
    jsonschema.validate(block.input, SCHEMA)
    with claude.messages.stream(model="tiny", max_tokens=80, messages=MESSAGES, tools=tools,
                                tool_choice={"type": "any"}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    jsonschema.validate(next(b for b in final.content if b.type == "tool_use").input, SCHEMA)


def test_anthropic_thinking_budget_closes_a_template_opened_block(claude):
    """The template opens <think>; the model never closes it by itself, so the budget must."""
    message = claude.messages.create(model="thinker", max_tokens=40, messages=MESSAGES,
                                     thinking={"type": "enabled", "budget_tokens": 8})
    kinds = [b.type for b in message.content]
    assert kinds == ["thinking", "text"], message.content
    assert message.content[0].thinking and message.content[1].text
    assert "</think>" not in message.content[1].text and "<think>" not in message.content[0].thinking
    assert message.usage.output_tokens == 40


def test_openai_streamed_reasoning_content(oai):
    stream = oai.chat.completions.create(model="thinker", messages=MESSAGES, max_tokens=30, stream=True)
    reasoning, content = "", ""
    for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning += getattr(delta, "reasoning_content", None) or ""
            content += delta.content or ""
    assert reasoning  # the template opened the block: the answer starts as reasoning
    assert not any(tag in reasoning + content for tag in TAGS)


def test_openai_thinking_off_renders_an_empty_block(oai):
    reply = oai.chat.completions.create(model="thinker", messages=MESSAGES, max_tokens=20,
                                        reasoning_effort="none")
    message = reply.choices[0].message
    assert message.content and not getattr(message, "reasoning_content", None)
