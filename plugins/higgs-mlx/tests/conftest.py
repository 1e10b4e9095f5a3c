"""Shared fixtures: tiny random-weight models and a started provider serving them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from higgs.config import HiggsSettings, ModelSettings, ProviderSettings
from higgs.hookspecs import hookimpl
from higgs.interfaces import CallContext, ProviderContext, RouteDecision
from higgs.specs import ArchitectureSpec

from higgs_mlx.provider import MlxProvider
from higgs_mlx.testing import build_tiny_model

LLAMA = ArchitectureSpec(name="llama", model_types=("llama",), module="mlx_lm.models.llama")
ARCHES = {"llama": LLAMA}


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama with a ChatML template whose greedy output is printable ASCII."""
    return build_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny-llama", seed=1)


@pytest.fixture(scope="session")
def tiny_llama_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama that may emit any token (EOS, specials, partial UTF-8 bytes)."""
    return build_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny-llama-raw", seed=2,
                            plain_output=False)


@pytest.fixture(scope="session")
def tiny_llama_no_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama whose tokenizer has no chat template."""
    return build_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny-llama-nt", seed=3,
                            chat_template=None)


def make_provider(models: list[tuple[Path, str]], **server: Any) -> MlxProvider:
    """A provider for ``models`` (path, name) with the llama architecture registered."""
    settings = HiggsSettings(models=[ModelSettings(path=str(p), name=n) for p, n in models])
    for key, value in server.items():
        setattr(settings.server, key, value)
    return MlxProvider(ProviderSettings(name="higgs"), ProviderContext(settings=settings, formats={},
                                                                       architectures=ARCHES))


@pytest.fixture
async def provider(tiny_llama: Path, tiny_llama_raw: Path, tiny_llama_no_template: Path
                   ) -> AsyncIterator[MlxProvider]:
    """A started provider serving ``tiny`` , ``raw`` and ``plain`` (no chat template)."""
    p = make_provider([(tiny_llama, "tiny"), (tiny_llama_raw, "raw"), (tiny_llama_no_template, "plain")])
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def call_context() -> CallContext:
    """A CallContext for direct provider calls."""
    return CallContext(request_id="test", client_format="openai", headers={},
                       route=RouteDecision(providers=("higgs",), model="tiny", rule="local", method="local"))


def mlx_lm_greedy(model_dir: Path, prompt: list[int], max_tokens: int) -> tuple[list[int], str]:
    """mlx-lm's own greedy generation for ``prompt``: (tokens from generate_step up to and including EOS,
    text from stream_generate)."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step, stream_generate

    model, tok = load(str(model_dir))
    tokens: list[int] = []
    for token, _ in generate_step(mx.array(prompt), model, max_tokens=max_tokens):
        tokens.append(int(token))
        if token in tok.eos_token_ids:
            break
    text = "".join(r.text for r in stream_generate(model, tok, prompt, max_tokens=max_tokens))
    return tokens, text


class LlamaArchPlugin:
    """Registers the llama architecture (mlx-lm's module) so this plugin's tests need no arch plugin."""

    @hookimpl
    def higgs_architectures(self) -> list[ArchitectureSpec]:
        return [LLAMA]


def mlx_app(settings: dict[str, Any]) -> Any:
    """The real gateway app with this plugin and the llama architecture, built from ``settings``."""
    from higgs.testing import build_app

    import higgs_mlx

    return build_app(settings, plugins=[("mlx", higgs_mlx), ("test-arch-llama", LlamaArchPlugin())])
