"""higgs-arch-mistral: Mistral 7B Instruct, Mistral NeMo and other mistral-architecture models.

mlx-lm runs them with its llama module, as ``mlx_lm.utils.MODEL_REMAPPING`` does.

Mistral ends a turn with the EOS ``</s>``. Tool calls follow ``[TOOL_CALLS]`` as a JSON list of
``{"name": ..., "arguments": {...}}`` (``mistral``); the official templates reject tool-call ids that are
not 9 alphanumeric characters (``options["tool_call_id_length"] = 9``: the engine maps other ids onto such ids).

Registration is cheap: the model code (``mlx_lm.models.llama``) is imported by the local engine only when a
model of this family loads. The chat-template fallback, used when a tokenizer carries none, is
Mistral NeMo Instruct 2407's official chat template ([INST], [AVAILABLE_TOOLS], [TOOL_CALLS]).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files

from higgs import hookimpl
from higgs.specs import ArchitectureSpec

__all__ = ["SPEC", "higgs_architectures"]

SPEC = ArchitectureSpec(
    name="mistral",
    model_types=("mistral",),
    module="mlx_lm.models.llama",
    reasoning_tags=None,
    tool_parser="mistral",
    extra_stop_tokens=("</s>",),
    chat_template=files(__name__).joinpath("chat_template.jinja").read_text(encoding="utf-8"),
    thinking_toggle=False,
    options={"tool_call_id_length": 9},
    description="Mistral 7B Instruct, Mistral NeMo and other mistral-architecture models",
)


@hookimpl
def higgs_architectures() -> Iterable[ArchitectureSpec]:
    """The mistral family."""
    return [SPEC]
