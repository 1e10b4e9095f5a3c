"""Cross-provider end-to-end fixtures: the real gateway app, the provider plugins, a fake upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import higgs_anthropic
import higgs_ollama
import higgs_openai
import pytest

from higgs.remote.fake import FakeUpstream
from higgs.testing import build_app, serve_app

PROVIDER_PLUGINS = [("openai", higgs_openai), ("anthropic", higgs_anthropic), ("ollama", higgs_ollama)]


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def backup() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        upstream.text = "Hello from the backup!"
        yield upstream


Gateway = Callable[[dict[str, Any]], AbstractAsyncContextManager[str]]


@pytest.fixture
def gateway() -> Gateway:
    """``async with gateway(config) as url``: the real app with the provider plugins, on a loopback port."""

    @asynccontextmanager
    async def run(config: dict[str, Any]) -> AsyncIterator[str]:
        app = build_app(config, plugins=PROVIDER_PLUGINS)
        async with serve_app(app) as url:
            yield url

    return run
