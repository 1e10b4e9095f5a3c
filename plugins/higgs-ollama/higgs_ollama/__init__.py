"""higgs provider kind ``ollama``: a local or remote Ollama server through its OpenAI-compatible API."""

from __future__ import annotations

from typing import Any, ClassVar

from higgs.config import ProviderSettings
from higgs.hookspecs import hookimpl
from higgs.interfaces import ProviderContext
from higgs.remote import RemoteProvider
from higgs.specs import ProviderSpec

__all__ = ["OllamaProvider", "higgs_providers"]


class OllamaProvider(RemoteProvider):
    """Ollama: OpenAI-compatible chat under ``/v1``, client credentials stripped unless ``strip_auth = false``,
    models listed from Ollama's own ``GET /api/tags``."""

    kind: ClassVar[str] = "ollama"
    default_url: ClassVar[str] = "http://localhost:11434"
    default_format: ClassVar[str] = "openai"
    strip_auth_default: ClassVar[bool] = True
    models_path: ClassVar[str] = "/api/tags"

    def __init__(self, settings: ProviderSettings, ctx: ProviderContext) -> None:
        super().__init__(settings, ctx)
        # Paths carry their own /v1 (chat) or /api (tags), so a configured ".../v1" base is the server root.
        self.base_url = self.base_url.removesuffix("/v1")

    def parse_models(self, body: Any) -> list[str]:
        """Model names from ``/api/tags`` (``{"models": [{"name": "llama3.2:latest", ...}]}``)."""
        models = body.get("models", []) if isinstance(body, dict) else []
        return [str(m.get("name") or m.get("model")) for m in models
                if isinstance(m, dict) and (m.get("name") or m.get("model"))]


@hookimpl
def higgs_providers() -> list[ProviderSpec]:
    """Register the ``ollama`` provider kind.

    It declares no ``formats`` so an ``[provider.X] format = "openai"`` section without a ``kind`` never
    resolves to Ollama (whose defaults strip credentials); choose it with ``kind = "ollama"`` or by naming
    the section ``[provider.ollama]``.
    """
    return [ProviderSpec(name="ollama", factory=OllamaProvider,
                         description="Ollama through its OpenAI-compatible API")]
