"""higgs-arch-phi3: Phi-3 / Phi-3.5 mini and medium, Phi-4-mini.

Turns are ``<|system|>``, ``<|user|>``, ``<|assistant|>`` ... ``<|end|>``. The GGUF/tokenizer EOS is
``<|endoftext|>``, so chat generation must also stop on ``<|end|>``. The Phi-3/3.5 templates define no
tool-call syntax; Phi-4-mini (also ``phi3``) calls tools with ``<|tool_call|>[...]<|/tool_call|>`` or
``functools[...]``, which is what the ``phi`` tool parser reads.

Registration is cheap: the model code (``mlx_lm.models.phi3``) is imported by the local engine only when a
model of this family loads. The chat-template fallback, used when a tokenizer carries none, is
Phi-3.5 mini instruct's official chat template.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files

from higgs import hookimpl
from higgs.specs import ArchitectureSpec

__all__ = ["SPEC", "higgs_architectures"]

SPEC = ArchitectureSpec(
    name="phi3",
    model_types=("phi3",),
    module="mlx_lm.models.phi3",
    reasoning_tags=None,
    tool_parser="phi",
    extra_stop_tokens=("<|end|>", "<|endoftext|>"),
    chat_template=files(__name__).joinpath("chat_template.jinja").read_text(encoding="utf-8"),
    thinking_toggle=False,
    options={},
    description="Phi-3 / Phi-3.5 mini and medium, Phi-4-mini",
)


@hookimpl
def higgs_architectures() -> Iterable[ArchitectureSpec]:
    """The phi3 family."""
    return [SPEC]
