"""Helpers shared by this plugin's tests (uniquely named so it never collides with other plugins' tests)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from higgs.config import HiggsSettings, ModelSettings, ProviderSettings
from higgs.hookspecs import hookimpl
from higgs.interfaces import Provider, ProviderContext
from higgs.records import RequestRecord
from higgs.specs import ArchitectureSpec

import higgs_auto_router

LLAMA = ArchitectureSpec(name="llama", model_types=("llama",), module="mlx_lm.models.llama")

CANDIDATES = [
    {"name": "code", "description": "Writing, reviewing or fixing source code", "provider": "coder"},
    {"name": "chat", "description": "Small talk and general questions", "provider": "chatter",
     "model": "chat-model"},
    {"name": "math", "description": "Arithmetic, algebra and proofs", "provider": "mathy", "model": "math-model"},
]


class LlamaArch:
    """Registers mlx-lm's llama module, so these tests need no architecture plugin."""

    @hookimpl
    def higgs_architectures(self) -> list[ArchitectureSpec]:
        return [LLAMA]


class Records:
    """Collects ``RequestRecord``s (the metrics a request leaves)."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    @hookimpl
    def higgs_request_finished(self, record: RequestRecord) -> None:
        self.records.append(record)


def make_provider(model_dir: Path, name: str = "router") -> Provider:
    """A local MLX provider serving ``model_dir`` as ``name`` (not started)."""
    from higgs_mlx.provider import MlxProvider

    settings = HiggsSettings(models=[ModelSettings(path=str(model_dir), name=name)])
    return MlxProvider(ProviderSettings(name="higgs"), ProviderContext(settings=settings, formats={},
                                                                       architectures={"llama": LLAMA}))


def auto_app(model_dir: Path, providers: Mapping[str, Provider], *, records: Records | None = None,
             routes: list[dict[str, Any]] | None = None, **auto: Any) -> Any:
    """The real gateway: the MLX engine serving ``model_dir`` as ``router``, fake upstreams, the auto-router."""
    import higgs_mlx
    from higgs.testing import build_app

    settings = {
        "models": [{"path": str(model_dir), "name": "router"}],
        "routes": routes if routes is not None else [
            *CANDIDATES, {"name": "fallback", "pattern": "^auto$", "provider": "fallback", "model": "fb-model"}],
        "auto_router": {"enabled": True, "model": "router", **auto},
    }
    plugins: list[Any] = [("mlx", higgs_mlx), ("test-arch-llama", LlamaArch()), ("auto-router", higgs_auto_router)]
    if records is not None:
        plugins.append(("test-records", records))
    return build_app(settings, providers=providers, plugins=plugins)
