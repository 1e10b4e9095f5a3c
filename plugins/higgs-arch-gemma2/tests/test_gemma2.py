"""higgs-arch-gemma2: registration, mlx-lm's model contract, and the family knowledge in its chat template."""

from __future__ import annotations

from typing import Any

import pytest
from higgs_mlx.testing import ArchitecturePluginContract, fallback_tokenizer, render_template

import higgs_arch_gemma2
from higgs_arch_gemma2 import SPEC

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class TestArchitecturePlugin(ArchitecturePluginContract):
    module = higgs_arch_gemma2
    entry_point = "arch-gemma2"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tokenizer without a chat template, so the family's fallback is what renders."""
    return fallback_tokenizer("gemma2", tmp_path_factory.mktemp("tok"))


def render(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """The fallback template rendered the way the engine renders it (Hugging Face's chat-template engine)."""
    kwargs.setdefault("bos_token", "<bos>")
    kwargs.setdefault("eos_token", "<eos>")
    return render_template(tokenizer, SPEC.chat_template, messages, **kwargs)


def test_every_stop_token_is_a_real_turn_end(tokenizer: Any):
    text = render(
        tokenizer,
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        add_generation_prompt=False,
    )
    assert any(stop in text for stop in SPEC.extra_stop_tokens), text


def test_gemma_turns_fold_the_system_message_into_the_first_user_turn(tokenizer: Any):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ]
    assert render(tokenizer, messages) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nAgain<end_of_turn>\n<start_of_turn>model\n"
    )
    assert SPEC.options["system_role"] is False


def test_roles_must_alternate(tokenizer: Any):
    with pytest.raises(Exception, match="alternate"):
        render(tokenizer, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert SPEC.tool_parser is None and SPEC.reasoning_tags is None
