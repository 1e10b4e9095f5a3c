"""Fixtures: a tiny random-weight classifier model and helpers to build the real gateway around it."""

from __future__ import annotations

from pathlib import Path

import pytest
from higgs_mlx.testing import build_tiny_model


@pytest.fixture(scope="session")
def tiny_router_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama (ChatML template, printable-ASCII greedy output) used as the classifier."""
    return build_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny-router", seed=7)


@pytest.fixture(scope="session")
def tiny_raw_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama that may emit any token (EOS, special tokens, partial UTF-8) when unconstrained."""
    return build_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny-raw", seed=11, plain_output=False)
