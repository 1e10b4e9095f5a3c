"""higgs-arch-gemma2: Gemma 2 (2B, 9B, 27B).

Turns are ``<start_of_turn>user|model ... <end_of_turn>``; the assistant role is ``model``.
Gemma 2 has no system role (its official template raises on one: ``options["system_role"] = False``)
and no tool-call syntax.

Registration is cheap: the model code (``mlx_lm.models.gemma2``) is imported by the local engine only when a
model of this family loads. The chat-template fallback, used when a tokenizer carries none, is
Gemma 2 IT's official chat template, with a system message folded into the first user turn.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files

from higgs import hookimpl
from higgs.specs import ArchitectureSpec

__all__ = ["SPEC", "higgs_architectures"]

SPEC = ArchitectureSpec(
    name="gemma2",
    model_types=("gemma2",),
    module="mlx_lm.models.gemma2",
    reasoning_tags=None,
    tool_parser=None,
    extra_stop_tokens=("<end_of_turn>", "<eos>"),
    chat_template=files(__name__).joinpath("chat_template.jinja").read_text(encoding="utf-8"),
    thinking_toggle=False,
    options={"system_role": False},
    description="Gemma 2",
)


@hookimpl
def higgs_architectures() -> Iterable[ArchitectureSpec]:
    """The gemma2 family."""
    return [SPEC]
