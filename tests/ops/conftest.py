"""Fixtures for the operations tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops_support import clean_env


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A private config directory for this test, in this process's environment too."""
    env = clean_env(tmp_path / "config")
    (tmp_path / "config" / "higgs").mkdir(parents=True)
    for key in [k for k in os.environ if k.startswith("HIGGS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", env["XDG_CONFIG_HOME"])
    monkeypatch.setenv("HF_HUB_CACHE", env["HF_HUB_CACHE"])
    yield env
