"""higgs-arch-llama: Llama 2 / 3.x, SmolLM2, DeepSeek-R1-Distill-Llama and other llama-architecture models.

Llama 3.x ends a turn with ``<|eot_id|>`` and a tool-calling turn with ``<|eom_id|>``; the base
models' EOS is ``<|end_of_text|>``. Tool calls are JSON objects ``{"name": ..., "parameters": {...}}``,
optionally after ``<|python_tag|>`` (``llama3_json``). DeepSeek-R1-Distill-Llama reasons between
``<think>`` and ``</think>`` (its template opens the block in the prompt).

Registration is cheap: the model code (``mlx_lm.models.llama``) is imported by the local engine only when a
model of this family loads. The chat-template fallback, used when a tokenizer carries none, is
Llama 3.1 Instruct's official chat template (tools, <|python_tag|>, ipython turns).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files

from higgs import hookimpl
from higgs.specs import ArchitectureSpec

__all__ = ["SPEC", "higgs_architectures"]

SPEC = ArchitectureSpec(
    name="llama",
    model_types=("llama",),
    module="mlx_lm.models.llama",
    reasoning_tags=("<think>", "</think>"),
    tool_parser="llama3_json",
    extra_stop_tokens=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
    chat_template=files(__name__).joinpath("chat_template.jinja").read_text(encoding="utf-8"),
    thinking_toggle=False,
    options={},
    description="Llama 2 / 3.x, SmolLM2, DeepSeek-R1-Distill-Llama and other llama-architecture models",
)


@hookimpl
def higgs_architectures() -> Iterable[ArchitectureSpec]:
    """The llama family."""
    return [SPEC]
