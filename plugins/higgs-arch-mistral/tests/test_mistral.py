"""higgs-arch-mistral: registration, mlx-lm's model contract, and the family knowledge in its chat template."""

from __future__ import annotations

import json
from typing import Any

import pytest
from higgs_mlx.testing import ArchitecturePluginContract, fallback_tokenizer, render_template

import higgs_arch_mistral
from higgs_arch_mistral import SPEC

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class TestArchitecturePlugin(ArchitecturePluginContract):
    module = higgs_arch_mistral
    entry_point = "arch-mistral"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tokenizer without a chat template, so the family's fallback is what renders."""
    return fallback_tokenizer("mistral", tmp_path_factory.mktemp("tok"))


def render(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """The fallback template rendered the way the engine renders it (Hugging Face's chat-template engine)."""
    kwargs.setdefault("bos_token", "<s>")
    kwargs.setdefault("eos_token", "</s>")
    return render_template(tokenizer, SPEC.chat_template, messages, **kwargs)


def test_every_stop_token_is_a_real_turn_end(tokenizer: Any):
    text = render(
        tokenizer,
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        add_generation_prompt=False,
    )
    assert any(stop in text for stop in SPEC.extra_stop_tokens), text


def test_inst_turns_with_the_system_message_in_the_last_user_turn(tokenizer: Any):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ]
    text = render(tokenizer, messages)
    assert text == "<s>[INST]Hi[/INST]Hello</s>[INST]Be brief.\n\nAgain[/INST]"


def test_tool_calls_render_after_tool_calls_marker(tokenizer: Any):
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "abc123xyz",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "abc123xyz", "content": "sunny"},
    ]
    text = render(tokenizer, messages, tools=[WEATHER_TOOL])
    assert "[AVAILABLE_TOOLS]" in text
    calls = text.split("[TOOL_CALLS]")[1].split("</s>")[0]
    assert json.loads(calls) == [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123xyz"}]
    assert '[TOOL_RESULTS]{"content": sunny, "call_id": "abc123xyz"}[/TOOL_RESULTS]' in text
    assert SPEC.tool_parser == "mistral"
    assert SPEC.options["tool_call_id_length"] == 9
    messages[1]["tool_calls"][0]["id"] = "call_1"
    with pytest.raises(Exception, match="length 9"):
        render(tokenizer, messages, tools=[WEATHER_TOOL])
    assert SPEC.module == "mlx_lm.models.llama"
