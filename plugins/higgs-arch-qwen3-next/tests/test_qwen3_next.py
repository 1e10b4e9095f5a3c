"""higgs-arch-qwen3-next: registration, mlx-lm's model contract, and the family knowledge in its chat template."""

from __future__ import annotations

import json
from typing import Any

import pytest
from higgs_mlx.testing import ArchitecturePluginContract, fallback_tokenizer, render_template

import higgs_arch_qwen3_next
from higgs_arch_qwen3_next import SPEC

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class TestArchitecturePlugin(ArchitecturePluginContract):
    module = higgs_arch_qwen3_next
    entry_point = "arch-qwen3-next"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tokenizer without a chat template, so the family's fallback is what renders."""
    return fallback_tokenizer("qwen3_next", tmp_path_factory.mktemp("tok"))


def render(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """The fallback template rendered the way the engine renders it (Hugging Face's chat-template engine)."""
    kwargs.setdefault("bos_token", None)
    kwargs.setdefault("eos_token", "<|im_end|>")
    return render_template(tokenizer, SPEC.chat_template, messages, **kwargs)


def test_every_stop_token_is_a_real_turn_end(tokenizer: Any):
    text = render(
        tokenizer,
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        add_generation_prompt=False,
    )
    assert any(stop in text for stop in SPEC.extra_stop_tokens), text


def test_chatml_turns(tokenizer: Any):
    text = render(tokenizer, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_tool_calls_render_hermes_style(tokenizer: Any):
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    text = render(tokenizer, messages, tools=[WEATHER_TOOL])
    assert "<tools>" in text and '"name": "get_weather"' in text
    call = text.split("<tool_call>\n")[-1].split("\n</tool_call>")[0]
    assert json.loads(call) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert "<tool_response>\nsunny\n</tool_response>" in text
    assert SPEC.tool_parser == "hermes"
    assert SPEC.reasoning_tags == ("<think>", "</think>")
    assert "<|im_end|>" in SPEC.extra_stop_tokens


def test_no_thinking_switch(tokenizer: Any):
    messages = [{"role": "user", "content": "Hi"}]
    assert render(tokenizer, messages, enable_thinking=False).endswith("<|im_start|>assistant\n")
    assert not SPEC.thinking_toggle
