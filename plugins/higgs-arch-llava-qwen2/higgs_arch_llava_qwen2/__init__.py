"""higgs-arch-llava-qwen2: LLaVA-Qwen2 image + text models (nanoLLaVA-1.5, ``model_type: llava-qwen2``).

The first vision family: the model code is mlx-vlm's (``llava_bunny``: SigLIP vision tower, MLP projector,
Qwen2 language model) behind mlx-lm's ``Model``/``ModelArgs`` contract (``higgs_arch_llava_qwen2.model``),
and ``ArchitectureSpec.vision`` names the adapter that turns images into prompt embeddings
(``higgs_arch_llava_qwen2.vision:LlavaQwen2Vision``). Text turns are Qwen's ChatML, ending with
``<|im_end|>``. Registration is cheap: nothing of mlx, mlx-vlm or Pillow is imported until a model loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files

from higgs import hookimpl
from higgs.specs import ArchitectureSpec

__all__ = ["SPEC", "higgs_architectures"]

SPEC = ArchitectureSpec(
    name="llava-qwen2",
    model_types=("llava-qwen2",),
    module="higgs_arch_llava_qwen2.model",
    reasoning_tags=None,
    tool_parser=None,
    extra_stop_tokens=("<|im_end|>", "<|endoftext|>"),
    chat_template=files(__name__).joinpath("chat_template.jinja").read_text(encoding="utf-8"),
    thinking_toggle=False,
    options={},
    description="LLaVA-Qwen2 vision models (nanoLLaVA)",
    vision="higgs_arch_llava_qwen2.vision:LlavaQwen2Vision",
)


@hookimpl
def higgs_architectures() -> Iterable[ArchitectureSpec]:
    """The llava-qwen2 family."""
    return [SPEC]
