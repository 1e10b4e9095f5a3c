"""higgs-arch-deepseek-v2: DeepSeek-V2 / V2-Lite / V2.5 and DeepSeek-Coder-V2 (multi-head latent attention, MoE).

Turns are ``<｜User｜>`` / ``<｜Assistant｜>`` ended by ``<｜end▁of▁sentence｜>``. Tool calls are
``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`` followed by a fenced JSON block
and ``<｜tool▁call▁end｜>`` (``deepseek``). DeepSeek's own templates concatenate a tool call's ``arguments`` as text, so
they must reach them as a JSON string, not a dict (``options["tool_arguments"] = "string"``); the fallback
template accepts both.

Registration is cheap: the model code (``mlx_lm.models.deepseek_v2``) is imported by the local engine only when a
model of this family loads. The chat-template fallback, used when a tokenizer carries none, is
DeepSeek's official V2.5/V3 chat template (<｜User｜>/<｜Assistant｜>, tool calls), fixed to render tool-call
turns under Hugging Face's renderer (see the template's header).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files

from higgs import hookimpl
from higgs.specs import ArchitectureSpec

__all__ = ["SPEC", "higgs_architectures"]

SPEC = ArchitectureSpec(
    name="deepseek_v2",
    model_types=("deepseek_v2",),
    module="mlx_lm.models.deepseek_v2",
    reasoning_tags=None,
    tool_parser="deepseek",
    extra_stop_tokens=("<｜end▁of▁sentence｜>",),
    chat_template=files(__name__).joinpath("chat_template.jinja").read_text(encoding="utf-8"),
    thinking_toggle=False,
    options={"tool_arguments": "string"},
    description="DeepSeek-V2 / V2-Lite / V2.5 and DeepSeek-Coder-V2",
)


@hookimpl
def higgs_architectures() -> Iterable[ArchitectureSpec]:
    """The deepseek_v2 family."""
    return [SPEC]
