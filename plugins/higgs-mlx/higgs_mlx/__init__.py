"""higgs-mlx: the local MLX engine.

Registers the ``mlx`` provider kind (serves ``[[models]]``, or the embedded default SmolLM2 when none is
configured) and the ``models import`` / ``models list`` commands. Registration is cheap: nothing here
imports mlx; the engine loads when the provider starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from higgs import hookimpl
from higgs.specs import CommandSpec, ProviderSpec

if TYPE_CHECKING:
    from higgs.config import ProviderSettings
    from higgs.interfaces import Provider, ProviderContext

__all__ = ["higgs_commands", "higgs_providers"]


def _make_provider(settings: ProviderSettings, ctx: ProviderContext) -> Provider:
    from higgs_mlx.provider import MlxProvider

    return MlxProvider(settings, ctx)


#: The engine's knobs under ``[server]`` (docs/engine.md), read by ``provider.engine_options``.
SERVER_KEYS = ("max_batch", "max_queue", "prefill_chunk", "interleave_chunk", "interleave_ms", "group_prefill",
               "prefix_cache_mb", "compiled_decode", "attention_kernel", "prefill_padding", "gather_ms")


@hookimpl
def higgs_providers() -> Iterable[ProviderSpec]:
    """The local engine: one provider instance (``higgs``) serving every configured local model."""
    return [ProviderSpec(name="mlx", factory=_make_provider, local=True, server_keys=SERVER_KEYS,
                         description="local MLX engine (models from the HF cache, local dirs, GGUF imports)")]


@hookimpl
def higgs_commands() -> Iterable[CommandSpec]:
    """``higgs models import FILE.gguf`` and ``higgs models list``."""
    return [
        CommandSpec(name="models import", target="higgs_mlx.cli:import_command",
                    help="Import a GGUF file (llama.cpp / Ollama) into an MLX model directory."),
        CommandSpec(name="models list", target="higgs_mlx.cli:list_command",
                    help="List local models: cached, imported and loadable."),
    ]
