"""higgs-arch-deepseek-v2: registration, mlx-lm's model contract, and the family knowledge in its chat template."""

from __future__ import annotations

from typing import Any

import pytest
from higgs_mlx.testing import ArchitecturePluginContract, fallback_tokenizer, render_template

import higgs_arch_deepseek_v2
from higgs_arch_deepseek_v2 import SPEC

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class TestArchitecturePlugin(ArchitecturePluginContract):
    module = higgs_arch_deepseek_v2
    entry_point = "arch-deepseek-v2"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tokenizer without a chat template, so the family's fallback is what renders."""
    return fallback_tokenizer("deepseek_v2", tmp_path_factory.mktemp("tok"))


def render(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """The fallback template rendered the way the engine renders it (Hugging Face's chat-template engine)."""
    kwargs.setdefault("bos_token", "<｜begin▁of▁sentence｜>")
    kwargs.setdefault("eos_token", "<｜end▁of▁sentence｜>")
    return render_template(tokenizer, SPEC.chat_template, messages, **kwargs)


def test_every_stop_token_is_a_real_turn_end(tokenizer: Any):
    text = render(
        tokenizer,
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        add_generation_prompt=False,
    )
    assert any(stop in text for stop in SPEC.extra_stop_tokens), text


BOS, EOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"
USER, ASSISTANT = "<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>"


def test_user_assistant_turns(tokenizer: Any):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ]
    assert render(tokenizer, messages) == f"{BOS}Be brief.{USER}Hi{ASSISTANT}Hello{EOS}{USER}Again{ASSISTANT}"
    assert SPEC.extra_stop_tokens == (EOS,)


def test_tool_calls_and_results(tokenizer: Any):
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    text = render(tokenizer, messages)
    calls_begin = "<\uff5ctool\u2581calls\u2581begin\uff5c>"
    call_begin, sep = "<\uff5ctool\u2581call\u2581begin\uff5c>", "<\uff5ctool\u2581sep\uff5c>"
    call_end, calls_end = "<\uff5ctool\u2581call\u2581end\uff5c>", "<\uff5ctool\u2581calls\u2581end\uff5c>"
    expected_call = f'{call_begin}function{sep}get_weather\n```json\n{{"city": "Paris"}}\n```{call_end}'
    assert f"{USER}Weather?{ASSISTANT}{calls_begin}{expected_call}{calls_end}{EOS}" in text
    assert "<\uff5ctool\u2581output\u2581begin\uff5c>sunny<\uff5ctool\u2581output\u2581end\uff5c>" in text
    assert SPEC.tool_parser == "deepseek" and SPEC.options["tool_arguments"] == "string"
    # The fallback also takes the dict arguments Hugging Face's convention uses.
    call["function"]["arguments"] = {"city": "Paris"}
    assert render(tokenizer, messages) == text
