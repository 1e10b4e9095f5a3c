"""The app factory: formats, providers and routers built from the registry, routes and middlewares wired."""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

import higgs
from higgs.config import LOCAL_PROVIDER, HiggsSettings, ProviderSettings
from higgs.errors import ConfigError, HiggsError, PluginError
from higgs.interfaces import Provider, ProviderContext, Router, WireFormat
from higgs.registry import Registry
from higgs.server import keys, middlewares
from higgs.server.gateway import Gateway, RouterServices

log = logging.getLogger("higgs.server")


def make_app(settings: HiggsSettings, registry: Registry) -> web.Application:
    """Build the gateway application.

    Instantiates every registered format, the local provider (when a local provider plugin is
    installed), one provider per ``[provider.NAME]`` and every routing strategy, then mounts the
    formats' routes plus ``/health`` and ``/v1/system``. Providers start and close through
    ``cleanup_ctx``. Plugins get ``higgs_configure_app`` last.

    Raises:
        ConfigError: a provider section no installed plugin can serve.
        PluginError: a factory of a plugin failed.
    """
    server = settings.server
    app = web.Application(
        client_max_size=server.max_body_size,
        middlewares=[
            middlewares.outer,
            middlewares.cors,
            middlewares.errors,
            middlewares.guard(server.max_body_size,
                              server.api_key.get_secret_value() if server.api_key else None, server.rate_limit),
            middlewares.deadline(server.timeout),
        ],
    )
    formats = build_formats(registry)
    providers = build_providers(settings, registry, formats)
    routers = build_routers(settings, registry, RouterServices(providers=providers, formats=formats,
                                                               registry=registry))
    gateway = Gateway(settings, registry, formats, providers, routers)
    app[keys.SETTINGS] = settings
    app[keys.REGISTRY] = registry
    app[keys.FORMATS] = formats
    app[keys.PROVIDERS] = providers
    app[keys.ROUTERS] = routers
    app[keys.GATEWAY] = gateway
    app[keys.STARTED_AT] = time.time()
    app.on_response_prepare.append(middlewares.on_response_prepare)
    app.cleanup_ctx.append(_providers_lifecycle)

    app.router.add_get("/health", health)
    app.router.add_get("/v1/system", system)
    mounted: dict[tuple[str, str], str] = {}
    routes = [(fmt, route) for fmt in formats.values() for route in fmt.routes()]
    # GET routes answer HEAD too (as HTTP expects), unless a format serves HEAD on that path itself.
    explicit_head = {route.path for _, route in routes if route.method.upper() == "HEAD"}
    for fmt, route in routes:
        key = (route.method.upper(), route.path)
        if key in mounted:
            log.debug("%s %s is served by format %s; %s's route skipped", *key, mounted[key], fmt.name)
            continue
        mounted[key] = fmt.name
        if route.handler is not None:
            handler = route.handler
        elif route.operation is not None:
            handler = gateway.handler(fmt, route.operation)
        else:
            raise PluginError(f"format '{fmt.name}': route {route.method} {route.path} has neither operation "
                              "nor handler")
        if key[0] == "GET":
            app.router.add_get(route.path, handler, allow_head=route.path not in explicit_head)
        else:
            app.router.add_route(route.method, route.path, handler)
    registry.pm.hook.higgs_configure_app(app=app, settings=settings)
    return app


def build_formats(registry: Registry) -> dict[str, WireFormat]:
    """One instance per registered format; ``openai`` first (it renders errors on unclaimed paths)."""
    names = sorted(registry.formats, key=lambda n: (n != "openai", n))
    formats: dict[str, WireFormat] = {}
    for name in names:
        try:
            formats[name] = registry.formats[name].factory()
        except Exception as err:
            raise PluginError(f"format '{name}' (plugin '{registry.owner('formats', name)}') failed to "
                              f"initialise: {err}") from err
    return formats


def build_providers(settings: HiggsSettings, registry: Registry,
                    formats: dict[str, WireFormat]) -> dict[str, Provider]:
    """The local provider (named ``higgs``) and one per ``[provider.NAME]``, in config order."""
    ctx = ProviderContext(settings=settings, formats=formats, architectures=dict(registry.architectures))
    providers: dict[str, Provider] = {}
    local = registry.local_provider_spec()
    others = [s.name for s in registry.providers.values() if s.local and s is not local]
    if local is not None and others:
        log.warning("several local provider kinds are installed (%s); using '%s' (disable the others with "
                    "--no-plugin)", ", ".join([local.name, *others]), local.name)
    if local is not None:
        providers[LOCAL_PROVIDER] = _build(local.factory, ProviderSettings(name=LOCAL_PROVIDER), ctx, local.name,
                                           registry)
    for name, section in settings.provider.items():
        spec = registry.provider_spec_for(name, section.kind, section.format)
        if spec is None:
            source = settings.source or "config"
            wanted = f"kind '{section.kind}'" if section.kind else f"format '{section.format}'"
            installed = ", ".join(sorted(registry.providers)) or "none"
            raise ConfigError(f"{source}: provider.{name}: no installed provider plugin serves {wanted} "
                              f"(installed provider kinds: {installed})")
        providers[name] = _build(spec.factory, section, ctx, spec.name, registry)
    return providers


def _build(factory: Any, section: ProviderSettings, ctx: ProviderContext, kind: str, registry: Registry) -> Provider:
    try:
        provider: Provider = factory(section, ctx)
    except HiggsError:
        raise
    except Exception as err:
        raise PluginError(f"provider '{section.name}' (kind '{kind}', plugin '{registry.owner('providers', kind)}') "
                          f"could not be created: {err}") from err
    if not provider.name:
        provider.name = section.name
    return provider


def build_routers(settings: HiggsSettings, registry: Registry, services: RouterServices) -> list[Router]:
    """Every routing strategy, in ascending ``order``."""
    routers = []
    for spec in sorted(registry.routers.values(), key=lambda s: (s.order, s.name)):
        try:
            router = spec.factory(settings, services)
        except HiggsError:
            raise
        except Exception as err:
            raise PluginError(f"routing strategy '{spec.name}' could not be created: {err}") from err
        if not getattr(router, "name", None):
            router.name = spec.name
        routers.append(router)
    return routers


async def _providers_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Start providers in order at startup; at shutdown tell plugins, then close providers in reverse."""
    started: list[Provider] = []
    try:
        for provider in app[keys.PROVIDERS].values():
            await provider.start()
            started.append(provider)
        yield
    finally:
        try:
            app[keys.REGISTRY].pm.hook.higgs_server_stopping(app=app, settings=app[keys.SETTINGS])
        except Exception:
            log.exception("a higgs_server_stopping hook failed")
        for provider in reversed(started):
            try:
                await provider.close()
            except Exception:
                log.exception("provider %s failed to close", provider.name)


def notify_started(app: web.Application) -> None:
    """Fire ``higgs_server_started`` (the server is listening); a no-op for apps not built by ``make_app``."""
    registry = app.get(keys.REGISTRY)
    if registry is None:
        return
    try:
        registry.pm.hook.higgs_server_started(app=app, settings=app[keys.SETTINGS])
    except Exception:
        log.exception("a higgs_server_started hook failed")


async def health(request: web.Request) -> web.Response:
    """``GET /health``: liveness, open without auth."""
    return web.json_response({"status": "ok", "version": higgs.__version__})


async def system(request: web.Request) -> web.Response:
    """``GET /v1/system``: version, pid, uptime, plugins, memory, provider state."""
    app = request.app
    registry = app[keys.REGISTRY]
    states: dict[str, Any] = {}
    for name, provider in app[keys.PROVIDERS].items():
        try:
            states[name] = {"local": provider.local, "format": provider.upstream_format, **provider.state()}
        except Exception as err:
            states[name] = {"error": f"state() failed: {err}"}
    plugins = [
        {"name": info.name, "package": info.package, "version": info.version, "status": info.status,
         "provides": {k: v for k, v in info.provides.items() if v}}
        for info in registry.plugins.infos.values()
    ]
    return web.json_response({
        "version": higgs.__version__,
        "python": sys.version.split()[0],
        "pid": os.getpid(),
        "uptime_s": round(time.time() - app[keys.STARTED_AT], 3),
        "plugins": plugins,
        "memory": process_memory(),
        "providers": states,
    })


def process_memory() -> dict[str, int]:
    """Resident set size now (Linux ``/proc``) and at peak (``getrusage``), in bytes."""
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = usage if sys.platform == "darwin" else usage * 1024  # macOS reports bytes, Linux KiB
    memory = {"peak_rss_bytes": peak}
    try:
        with open("/proc/self/statm") as statm:
            memory["rss_bytes"] = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        memory["rss_bytes"] = peak
    return memory
