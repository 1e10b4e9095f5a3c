"""higgs-arch-qwen3-moe: Qwen3 mixture-of-experts models (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder-30B-A3B).

Same conventions as Qwen3 dense. Qwen3-Coder checkpoints (also ``qwen3_moe``) ship their own
template and emit XML-style ``<function=...>`` tool calls; their tokenizer template is used, and the
``tool_parser`` stays ``hermes``, which Qwen3 chat models use.

Registration is cheap: the model code (``mlx_lm.models.qwen3_moe``) is imported by the local engine only when a
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
    name="qwen3_moe",
    model_types=("qwen3_moe",),
    module="mlx_lm.models.qwen3_moe",
    reasoning_tags=("<think>", "</think>"),
    tool_parser="hermes",
    extra_stop_tokens=("<|im_end|>", "<|endoftext|>"),
    chat_template=files(__name__).joinpath("chat_template.jinja").read_text(encoding="utf-8"),
    thinking_toggle=True,
    options={},
    description="Qwen3 mixture-of-experts models",
)


@hookimpl
def higgs_architectures() -> Iterable[ArchitectureSpec]:
    """The qwen3_moe family."""
    return [SPEC]
