"""higgs-arch-qwen3-next: Qwen3-Next (80B-A3B Instruct / Thinking: gated delta-net + attention hybrid, MoE).

ChatML turns end with ``<|im_end|>``; hermes tool calls. The Thinking checkpoint always reasons
(its template opens ``<think>`` in the prompt); its templates have no ``enable_thinking`` switch, so
``thinking_toggle`` is False.

Registration is cheap: the model code (``mlx_lm.models.qwen3_next``) is imported by the local engine only when a
model of this family loads. The chat-template fallback, used when a tokenizer carries none, is
Qwen3's official chat template without the ``enable_thinking`` switch, as in the
Qwen3-2507 / Qwen3-Next Instruct templates (ChatML, hermes tools).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files

from higgs import hookimpl
from higgs.specs import ArchitectureSpec

__all__ = ["SPEC", "higgs_architectures"]

SPEC = ArchitectureSpec(
    name="qwen3_next",
    model_types=("qwen3_next",),
    module="mlx_lm.models.qwen3_next",
    reasoning_tags=("<think>", "</think>"),
    tool_parser="hermes",
    extra_stop_tokens=("<|im_end|>", "<|endoftext|>"),
    chat_template=files(__name__).joinpath("chat_template.jinja").read_text(encoding="utf-8"),
    thinking_toggle=False,
    options={},
    description="Qwen3-Next",
)


@hookimpl
def higgs_architectures() -> Iterable[ArchitectureSpec]:
    """The qwen3_next family."""
    return [SPEC]
