"""higgs-format-ollama: Ollama's native API (``/api/chat``, ``/api/generate``, ``/api/tags``, ...) as a wire format.

Desktop tools that speak only Ollama reach every higgs route, local model and provider through it; a
provider with ``format = "ollama"`` talks to an Ollama server through its native API.
"""

from __future__ import annotations

from collections.abc import Iterable

from higgs import hookimpl
from higgs.specs import FormatSpec

PLUGIN_NAME = "ollama-format"


def _factory() -> object:
    from higgs_format_ollama.format import OllamaFormat

    return OllamaFormat()


@hookimpl
def higgs_formats() -> Iterable[FormatSpec]:
    """Register the ``ollama`` format."""
    return [FormatSpec(name="ollama", factory=_factory,  # type: ignore[arg-type]
                       description="Ollama native API: /api/chat, /api/generate, /api/embed, /api/tags, ...")]
