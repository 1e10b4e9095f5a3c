"""higgs provider kind ``openai``: OpenAI and any OpenAI-compatible server."""

from __future__ import annotations

from typing import ClassVar

from higgs.hookspecs import hookimpl
from higgs.remote import RemoteProvider
from higgs.specs import ProviderSpec

__all__ = ["OpenAIProvider", "higgs_providers"]


class OpenAIProvider(RemoteProvider):
    """An OpenAI-compatible upstream: ``Authorization: Bearer`` auth, model list from ``GET /v1/models``."""

    kind: ClassVar[str] = "openai"
    default_url: ClassVar[str] = "https://api.openai.com/v1"
    default_format: ClassVar[str] = "openai"


@hookimpl
def higgs_providers() -> list[ProviderSpec]:
    """Register the ``openai`` provider kind."""
    return [ProviderSpec(name="openai", factory=OpenAIProvider, formats=("openai",),
                         description="OpenAI and OpenAI-compatible servers (vLLM, llama.cpp, LM Studio, ...)")]
