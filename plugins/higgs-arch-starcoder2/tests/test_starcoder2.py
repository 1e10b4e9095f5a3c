"""higgs-arch-starcoder2: registration, mlx-lm's model contract, and the family knowledge in its chat template."""

from __future__ import annotations

from typing import Any

import pytest
from higgs_mlx.testing import ArchitecturePluginContract, fallback_tokenizer, render_template

import higgs_arch_starcoder2
from higgs_arch_starcoder2 import SPEC

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class TestArchitecturePlugin(ArchitecturePluginContract):
    module = higgs_arch_starcoder2
    entry_point = "arch-starcoder2"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tokenizer without a chat template, so the family's fallback is what renders."""
    return fallback_tokenizer("starcoder2", tmp_path_factory.mktemp("tok"))


def render(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """The fallback template rendered the way the engine renders it (Hugging Face's chat-template engine)."""
    kwargs.setdefault("bos_token", "<|endoftext|>")
    kwargs.setdefault("eos_token", "<|endoftext|>")
    return render_template(tokenizer, SPEC.chat_template, messages, **kwargs)


def test_every_stop_token_is_a_real_turn_end(tokenizer: Any):
    text = render(
        tokenizer,
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        add_generation_prompt=False,
    )
    assert any(stop in text for stop in SPEC.extra_stop_tokens), text


def test_instruction_response_turns(tokenizer: Any):
    messages = [
        {"role": "user", "content": "Sort a list"},
        {"role": "assistant", "content": "sorted(x)"},
        {"role": "user", "content": "Reverse it"},
    ]
    text = render(tokenizer, messages)
    assert text.startswith("<|endoftext|>You are an exceptionally intelligent coding assistant")
    assert text.endswith(
        "### Instruction\nSort a list\n\n### Response\nsorted(x)<|endoftext|>\n\n"
        "### Instruction\nReverse it\n\n### Response\n"
    )


def test_a_system_message_replaces_the_preamble(tokenizer: Any):
    text = render(tokenizer, [{"role": "system", "content": "Answer in Rust."}, {"role": "user", "content": "Hi"}])
    assert text == "<|endoftext|>Answer in Rust.\n\n### Instruction\nHi\n\n### Response\n"
