"""higgs-arch-qwen3: Qwen3 dense models (0.6B to 32B, 2507 Instruct/Thinking).

ChatML turns end with ``<|im_end|>``; reasoning between ``<think>`` and ``</think>``; the
template honours ``enable_thinking`` (False renders an empty think block so the model answers
directly); hermes tool calls ``<tool_call>{...}</tool_call>``.

Registration is cheap: the model code (``mlx_lm.models.qwen3``) is imported by the local engine only when a
model of this family loads. The chat-template fallback, used when a tokenizer carries none, is
Qwen3's official chat template (ChatML, hermes tools, enable_thinking).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files

from higgs import hookimpl
from higgs.specs import ArchitectureSpec

__all__ = ["SPEC", "higgs_architectures"]

SPEC = ArchitectureSpec(
    name="qwen3",
    model_types=("qwen3",),
    module="mlx_lm.models.qwen3",
    reasoning_tags=("<think>", "</think>"),
    tool_parser="hermes",
    extra_stop_tokens=("<|im_end|>", "<|endoftext|>"),
    chat_template=files(__name__).joinpath("chat_template.jinja").read_text(encoding="utf-8"),
    thinking_toggle=True,
    options={},
    description="Qwen3 dense models",
)


@hookimpl
def higgs_architectures() -> Iterable[ArchitectureSpec]:
    """The qwen3 family."""
    return [SPEC]
