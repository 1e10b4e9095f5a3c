"""Fixtures: tiny random-weight models and a started provider serving them (helpers: ``mlx_support``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mlx_support import make_provider

from higgs_mlx.provider import MlxProvider
from higgs_mlx.testing import build_tiny_model


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


@pytest.fixture(params=["eager", "compiled"])
async def provider(request: pytest.FixtureRequest, tiny_llama: Path, tiny_llama_raw: Path,
                   tiny_llama_no_template: Path) -> AsyncIterator[MlxProvider]:
    """A started provider serving ``tiny`` , ``raw`` and ``plain`` (no chat template), once with eager decode
    steps (the CPU default) and once with compiled ones (the GPU default, ``higgs_mlx.compiled``)."""
    p = make_provider([(tiny_llama, "tiny"), (tiny_llama_raw, "raw"), (tiny_llama_no_template, "plain")],
                      compiled_decode=request.param == "compiled")
    await p.start()
    try:
        yield p
    finally:
        await p.close()
