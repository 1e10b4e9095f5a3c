"""higgs-arch-llama: registration, mlx-lm's model contract, and the family knowledge in its chat template."""

from __future__ import annotations

import json
from typing import Any

import pytest
from higgs_mlx.testing import ArchitecturePluginContract, fallback_tokenizer, render_template

import higgs_arch_llama
from higgs_arch_llama import SPEC

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class TestArchitecturePlugin(ArchitecturePluginContract):
    module = higgs_arch_llama
    entry_point = "arch-llama"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tokenizer without a chat template, so the family's fallback is what renders."""
    return fallback_tokenizer("llama", tmp_path_factory.mktemp("tok"))


def render(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """The fallback template rendered the way the engine renders it (Hugging Face's chat-template engine)."""
    kwargs.setdefault("bos_token", "<|begin_of_text|>")
    kwargs.setdefault("eos_token", "<|eot_id|>")
    return render_template(tokenizer, SPEC.chat_template, messages, **kwargs)


def test_every_stop_token_is_a_real_turn_end(tokenizer: Any):
    text = render(
        tokenizer,
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        add_generation_prompt=False,
    )
    assert any(stop in text for stop in SPEC.extra_stop_tokens), text


def test_llama3_turns_and_generation_prompt(tokenizer: Any):
    text = render(tokenizer, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert "Be brief.<|eot_id|>" in text
    assert "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_tool_calls_render_as_llama3_json(tokenizer: Any):
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
    assert "Environment: ipython" in text and '"name": "get_weather"' in text
    call = text.split("<|start_header_id|>assistant<|end_header_id|>\n\n")[1].split("<|eot_id|>")[0]
    assert json.loads(call) == {"name": "get_weather", "parameters": {"city": "Paris"}}
    assert "<|start_header_id|>ipython<|end_header_id|>" in text
    assert SPEC.tool_parser == "llama3_json"
    assert {"<|eot_id|>", "<|eom_id|>"} <= set(SPEC.extra_stop_tokens)
