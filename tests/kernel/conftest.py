"""Kernel test isolation: no user config, no HIGGS_* variables from the developer's shell."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for name in list(os.environ):
        if name.startswith("HIGGS_"):
            monkeypatch.delenv(name)
    return tmp_path / "xdg" / "higgs"
