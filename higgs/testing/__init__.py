"""The public plugin test harness: a fake provider, app builders, loopback servers and SSE helpers.

Typical use (see also the pytest fixtures in ``higgs.testing.pytest_plugin``)::

    from higgs.testing import FakeProvider, build_app, serve_in_thread

    app = build_app(providers={"higgs": FakeProvider(local=True, models=["tiny"])})
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x")
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])

Nothing here touches the network beyond 127.0.0.1, and nothing loads installed entry points unless
asked (``entrypoints=True``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from higgs.config import LOCAL_PROVIDER, HiggsSettings, ProviderSettings
from higgs.hookspecs import hookimpl
from higgs.interfaces import Provider, RouteDecision, RouteQuery, Router
from higgs.plugins import LoadedPlugins, load_plugins
from higgs.registry import Registry
from higgs.server.app import make_app, notify_started
from higgs.specs import ProviderSpec, RouterSpec
from higgs.testing.fake import FakeProvider, word_count
from higgs.testing.sse import SSEEvent, iter_sse, parse_sse

__all__ = [
    "BUILTIN_PLUGIN_MODULES",
    "FakeProvider",
    "FixedRouter",
    "ProviderPlugin",
    "SSEEvent",
    "app_client",
    "build_app",
    "build_registry",
    "builtin_plugins",
    "iter_sse",
    "parse_sse",
    "router_plugin",
    "serve_app",
    "serve_in_thread",
    "word_count",
]

#: The kernel's own plugins (the same modules its entry points name).
BUILTIN_PLUGIN_MODULES: dict[str, str] = {
    "openai-format": "higgs.formats.openai",
    "anthropic-format": "higgs.formats.anthropic",
    "routing": "higgs.routing.builtin",
}


def builtin_plugins(*names: str) -> list[tuple[str, object]]:
    """The built-in plugins as ``(name, module)`` pairs (all of them by default), imported explicitly."""
    wanted = names or tuple(BUILTIN_PLUGIN_MODULES)
    return [(n, importlib.import_module(BUILTIN_PLUGIN_MODULES[n])) for n in wanted]


class ProviderPlugin:
    """A plugin registering ready-made provider instances, one provider kind each.

    The kind of instance ``NAME`` is ``test-NAME``; ``build_app`` adds the matching ``[provider.NAME]``
    sections. The instance named ``higgs`` is registered as the local kind.
    """

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self.providers = dict(providers)

    @hookimpl
    def higgs_providers(self) -> list[ProviderSpec]:
        specs = []
        for name, provider in self.providers.items():
            local = name == LOCAL_PROVIDER
            fmt = provider.upstream_format or "openai"
            specs.append(ProviderSpec(name=f"test-{name}", factory=_returns(provider), local=local,
                                      formats=() if local else (fmt,), description=f"test provider {name}"))
        return specs


def _returns(provider: Provider) -> Any:
    def factory(settings: Any, ctx: Any) -> Provider:
        provider.name = settings.name
        return provider

    return factory


class FixedRouter(Router):
    """A strategy that sends models matching ``models`` (all when empty) to ``providers`` in order."""

    def __init__(self, providers: Iterable[str], *, models: Iterable[str] = (), rule: str = "test",
                 rewrite: str | None = None, name: str = "fixed") -> None:
        self.name = name
        self.providers = tuple(providers)
        self.models = set(models)
        self.rule = rule
        self.rewrite = rewrite

    async def route(self, query: RouteQuery) -> RouteDecision | None:
        if self.models and query.model not in self.models:
            return None
        return RouteDecision(providers=self.providers, model=self.rewrite or query.model, rule=self.rule,
                             method="test")


def router_plugin(router: Router, order: int = 5) -> object:
    """A plugin registering ``router`` as a strategy (order 5: before every built-in one)."""

    class _Plugin:
        name = f"router-{router.name or 'fixed'}-{id(router):x}"

        @hookimpl
        def higgs_routers(self) -> list[RouterSpec]:
            return [RouterSpec(name=router.name or "fixed", factory=lambda settings, services: router, order=order)]

    return _Plugin()


def build_registry(plugins: Iterable[object | tuple[str, object]] = (), *, builtins: bool | Iterable[str] = True,
                   entrypoints: bool = False, settings: HiggsSettings | None = None) -> Registry:
    """A registry from explicit plugins (plus the built-ins), honouring ``settings.plugins`` selection."""
    chosen: list[object | tuple[str, object]] = []
    if builtins:
        chosen += builtin_plugins(*(() if builtins is True else tuple(builtins)))
    chosen += list(plugins)
    selection = settings.plugins if settings is not None else None
    loaded: LoadedPlugins = load_plugins(
        enabled=selection.enabled if selection else (), disabled=selection.disabled if selection else (),
        load_entrypoints=entrypoints, plugins=chosen)
    return Registry.build(loaded)


def build_app(settings: HiggsSettings | Mapping[str, Any] | None = None, *,
              providers: Mapping[str, Provider] | None = None, plugins: Iterable[object | tuple[str, object]] = (),
              builtins: bool | Iterable[str] = True, entrypoints: bool = False) -> web.Application:
    """Build the real gateway app for tests.

    Args:
        settings: ``HiggsSettings`` or a plain dict in the TOML schema (validated the same way).
        providers: provider instances by name (``higgs`` = the local one); sections are added for them.
        plugins: extra plugin objects/modules.
        builtins: include the built-in formats and routing (True), none (False) or the named ones.
        entrypoints: also load installed plugins (the kernel's own tests never do).
    """
    if settings is None or isinstance(settings, Mapping):
        data = json.loads(json.dumps(settings or {}))
        for name, provider in (providers or {}).items():
            if name != LOCAL_PROVIDER:
                section = data.setdefault("provider", {}).setdefault(name, {})
                section.setdefault("kind", f"test-{name}")
                section.setdefault("format", provider.upstream_format or "openai")
        from higgs.settings_loader import build_settings

        settings, _ = build_settings(data, "<test>")
    else:
        for name, provider in (providers or {}).items():
            if name != LOCAL_PROVIDER and name not in settings.provider:
                settings.provider[name] = ProviderSettings(name=name, kind=f"test-{name}",
                                                           format=provider.upstream_format or "openai")
    extra = [ProviderPlugin(providers)] if providers else []
    registry = build_registry([*extra, *plugins], builtins=builtins, entrypoints=entrypoints, settings=settings)
    return make_app(settings, registry)


@contextlib.asynccontextmanager
async def app_client(app: web.Application) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """An aiohttp ``TestClient`` on a loopback port, with handler cancellation on (as in ``higgs serve``)."""
    server = TestServer(app, handler_cancellation=True)
    client = TestClient(server)
    await client.start_server()
    notify_started(app)
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run ``app`` on a real loopback port in this event loop; yields the base URL (no trailing slash).

    Use with async SDK clients (``openai.AsyncOpenAI``); sync clients need ``serve_in_thread``.
    """
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    notify_started(app)
    try:
        address = runner.addresses[0]
        host_part = f"[{address[0]}]" if ":" in address[0] else address[0]
        yield f"http://{host_part}:{address[1]}"
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def serve_in_thread(app: web.Application, host: str = "127.0.0.1", port: int = 0,
                    timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` on a real port in a background thread (its own event loop); yields the base URL.

    For the official sync SDK clients, which block the calling thread.
    """
    loop = asyncio.new_event_loop()
    url: list[str] = []
    failed: list[BaseException] = []
    started = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with serve_app(app, host, port) as base:
                url.append(base)
                started.set()
                await stop.wait()
        except BaseException as err:
            failed.append(err)
            started.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="higgs-test-server",
                              daemon=True)
    thread.start()
    if not started.wait(timeout):
        raise TimeoutError("the test server did not start")
    if failed:
        raise failed[0]
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        loop.close()
