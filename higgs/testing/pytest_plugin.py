"""pytest fixtures for higgs plugins (registered through the ``pytest11`` entry point).

- ``higgs_app(settings=None, providers=None, plugins=(), builtins=True)``: build the real gateway app.
- ``higgs_client(app=None, **build_kwargs)``: an aiohttp test client on a loopback port (async).
- ``higgs_server(app=None, **build_kwargs)``: the app on a real loopback port in this loop; returns the
  base URL, for async SDK clients (``openai.AsyncOpenAI``, ``anthropic.AsyncAnthropic``).
- ``higgs_thread_server(app=None, **build_kwargs)``: the same in a background thread, for sync SDKs.

Each fixture cleans up everything it started when the test ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from higgs.testing import app_client, build_app, serve_app, serve_in_thread


@pytest.fixture
def higgs_app() -> Callable[..., web.Application]:
    """Factory: ``higgs_app(settings=..., providers=..., plugins=...)`` -> ``web.Application``."""
    return build_app


try:  # async fixtures need pytest-asyncio; without it only the sync fixtures exist (pytest must not break)
    import pytest_asyncio
except ImportError:  # pragma: no cover - depends on the environment
    pytest_asyncio = None  # type: ignore[assignment]


def _async_fixture(fn: Any) -> Any:
    return pytest_asyncio.fixture(fn) if pytest_asyncio is not None else fn


@_async_fixture
async def higgs_client() -> AsyncIterator[Callable[..., Any]]:
    """Async factory: ``await higgs_client(app)`` or ``await higgs_client(providers=...)`` -> ``TestClient``."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(app: web.Application | None = None, **kwargs: Any) -> TestClient[web.Request, web.Application]:
            return await stack.enter_async_context(app_client(app if app is not None else build_app(**kwargs)))

        yield make


@_async_fixture
async def higgs_server() -> AsyncIterator[Callable[..., Any]]:
    """Async factory: ``url = await higgs_server(app)`` (or build kwargs) -> base URL on a real port."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(app: web.Application | None = None, **kwargs: Any) -> str:
            return await stack.enter_async_context(serve_app(app if app is not None else build_app(**kwargs)))

        yield make


@pytest.fixture
def higgs_thread_server() -> Iterator[Callable[..., str]]:
    """Factory: ``url = higgs_thread_server(app)`` -> base URL served from a background thread."""
    with contextlib.ExitStack() as stack:

        def make(app: web.Application | None = None, **kwargs: Any) -> str:
            return stack.enter_context(serve_in_thread(app if app is not None else build_app(**kwargs)))

        yield make
