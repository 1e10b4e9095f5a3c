"""higgs-arch-starcoder2: registration, mlx-lm's model contract, and the family knowledge in its chat template."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from higgs.testing import build_registry
from higgs_mlx.testing import check_architecture, fallback_tokenizer, render_template

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


def test_registered_under_the_higgs_entry_point_group():
    (entry,) = [e for e in entry_points(group="higgs") if e.name == "arch-starcoder2"]
    assert entry.load() is higgs_arch_starcoder2
    assert list(higgs_arch_starcoder2.higgs_architectures()) == [SPEC]


def test_the_registry_maps_its_model_types_to_the_spec():
    registry = build_registry([("arch-starcoder2", higgs_arch_starcoder2)], builtins=False)
    assert {t: registry.architectures[t] for t in SPEC.model_types} == dict.fromkeys(SPEC.model_types, SPEC)


def test_registration_imports_no_model_code():
    heavy = "('mlx', 'mlx_lm', 'transformers')"
    code = f"import sys, higgs_arch_starcoder2; print([m for m in sys.modules if m.split('.')[0] in {heavy}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_module_follows_mlx_lm_and_generates_like_it(tmp_path: Path):
    reference = check_architecture(SPEC, tmp_path)
    assert len(reference.tokens) == 6


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
