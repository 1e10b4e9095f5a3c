"""higgs-arch-starcoder2: StarCoder2 (3B, 7B, 15B, 15B-Instruct).

StarCoder2 base models are code-completion models without a chat template (they serve
``/v1/completions`` best); the instruct model uses ``### Instruction`` / ``### Response`` turns ended by
the EOS ``<|endoftext|>``. No tool-call syntax.

Registration is cheap: the model code (``mlx_lm.models.starcoder2``) is imported by the local engine only when a
model of this family loads. The chat-template fallback, used when a tokenizer carries none, is
StarCoder2-15B-Instruct-v0.1's prompt format (### Instruction / ### Response).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files

from higgs import hookimpl
from higgs.specs import ArchitectureSpec

__all__ = ["SPEC", "higgs_architectures"]

SPEC = ArchitectureSpec(
    name="starcoder2",
    model_types=("starcoder2",),
    module="mlx_lm.models.starcoder2",
    reasoning_tags=None,
    tool_parser=None,
    extra_stop_tokens=("<|endoftext|>",),
    chat_template=files(__name__).joinpath("chat_template.jinja").read_text(encoding="utf-8"),
    thinking_toggle=False,
    options={"system_role": True},
    description="StarCoder2",
)


@hookimpl
def higgs_architectures() -> Iterable[ArchitectureSpec]:
    """The starcoder2 family."""
    return [SPEC]
