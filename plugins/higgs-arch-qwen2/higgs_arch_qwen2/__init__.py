"""higgs-arch-qwen2: Qwen2 / Qwen2.5 (and -Coder), QwQ and DeepSeek-R1-Distill-Qwen.

ChatML turns end with ``<|im_end|>``. Tool calls are hermes style:
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. QwQ and DeepSeek-R1-Distill-Qwen reason
between ``<think>`` and ``</think>`` (their templates open the block in the prompt).

Registration is cheap: the model code (``mlx_lm.models.qwen2``) is imported by the local engine only when a
model of this family loads. The chat-template fallback, used when a tokenizer carries none, is
Qwen2.5 Instruct's official chat template (ChatML, hermes-style tools).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files

from higgs import hookimpl
from higgs.specs import ArchitectureSpec

__all__ = ["SPEC", "higgs_architectures"]

SPEC = ArchitectureSpec(
    name="qwen2",
    model_types=("qwen2",),
    module="mlx_lm.models.qwen2",
    reasoning_tags=("<think>", "</think>"),
    tool_parser="hermes",
    extra_stop_tokens=("<|im_end|>", "<|endoftext|>"),
    chat_template=files(__name__).joinpath("chat_template.jinja").read_text(encoding="utf-8"),
    thinking_toggle=False,
    options={},
    description="Qwen2 / Qwen2.5",
)


@hookimpl
def higgs_architectures() -> Iterable[ArchitectureSpec]:
    """The qwen2 family."""
    return [SPEC]
