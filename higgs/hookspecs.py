"""Every hook a higgs plugin can implement.

A plugin is a module (or object) registered under the entry-point group ``higgs``::

    [project.entry-points.higgs]
    acme = "higgs_acme"

and decorated with ``higgs.hookimpl``. Registration hooks return typed records (``higgs.specs``) and run
once at startup: keep them cheap and offline (no network, no model loading, no heavy imports at module top).
Per-request work happens in the objects those records build, never through pluggy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from aiohttp import web

    from higgs.config import HiggsSettings
    from higgs.records import RequestRecord
    from higgs.specs import ArchitectureSpec, CommandSpec, FormatSpec, ProviderSpec, RouterSpec

PROJECT = "higgs"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ------------------------------------------------------------------------------------------------
# Registration hooks
# ------------------------------------------------------------------------------------------------


@hookspec
def higgs_providers() -> Iterable[ProviderSpec]:
    """Register provider kinds: backends that answer canonical requests.

    Return ``ProviderSpec`` records. ``factory(settings, ctx)`` is called at startup once per configured
    provider of that kind and returns a ``higgs.interfaces.Provider``.

    Example::

        @higgs.hookimpl
        def higgs_providers():
            return [ProviderSpec(name="acme", factory=AcmeProvider, formats=("openai",))]
    """


@hookspec
def higgs_formats() -> Iterable[FormatSpec]:
    """Register wire formats: the HTTP routes they serve and their (de)serializers.

    Return ``FormatSpec`` records whose ``factory()`` returns a ``higgs.interfaces.WireFormat``. The OpenAI
    and Anthropic formats ship as built-in plugins through this same hook.

    Example::

        @higgs.hookimpl
        def higgs_formats():
            return [FormatSpec(name="ollama", factory=OllamaFormat)]
    """


@hookspec
def higgs_routers() -> Iterable[RouterSpec]:
    """Register routing strategies.

    Return ``RouterSpec`` records; strategies run in ascending ``order`` and the first that returns a
    ``RouteDecision`` wins. ``factory(settings, services)`` builds a ``higgs.interfaces.Router``.

    Example::

        @higgs.hookimpl
        def higgs_routers():
            return [RouterSpec(name="geo", factory=GeoRouter, order=25)]
    """


@hookspec
def higgs_architectures() -> Iterable[ArchitectureSpec]:
    """Register local model architectures by ``model_type``.

    Return ``ArchitectureSpec`` records naming an mlx-lm-style model module by import path (the kernel
    never imports it) plus the family's knowledge: reasoning tags, tool-call syntax, stop tokens and a
    chat-template fallback.

    Example::

        @higgs.hookimpl
        def higgs_architectures():
            return [ArchitectureSpec(name="llama", model_types=("llama",), module="mlx_lm.models.llama")]
    """


@hookspec
def higgs_commands() -> Iterable[CommandSpec]:
    """Register extra CLI subcommands.

    Return ``CommandSpec`` records; ``target`` is imported only when the command runs.

    Example::

        @higgs.hookimpl
        def higgs_commands():
            return [CommandSpec(name="models import", target="higgs_mlx.cli:import_gguf")]
    """


# ------------------------------------------------------------------------------------------------
# Lifecycle and event hooks
# ------------------------------------------------------------------------------------------------


@hookspec
def higgs_configure_app(app: web.Application, settings: HiggsSettings) -> None:
    """Adjust the aiohttp application before it serves: extra routes, middlewares, ``cleanup_ctx``.

    Called once, after the kernel built the app. Async setup/teardown belongs in ``app.cleanup_ctx``
    (that is the server startup/shutdown hook point), not in this function.

    Example::

        @higgs.hookimpl
        def higgs_configure_app(app, settings):
            app.router.add_get("/acme/ping", ping)
    """


@hookspec
def higgs_server_started(app: web.Application, settings: HiggsSettings) -> None:
    """The server is listening and its providers are started. Must not block."""


@hookspec
def higgs_server_stopping(app: web.Application, settings: HiggsSettings) -> None:
    """The server is shutting down (before providers close). Must not block."""


@hookspec(firstresult=True)
def higgs_serve_frontend(app: web.Application, host: str, port: int, settings: HiggsSettings) -> int | None:
    """Serve ``app`` behind an interactive front end (``higgs serve --tui``) and return the exit code.

    The first plugin that returns a value owns the terminal: it runs the server (e.g. on a thread) and
    returns when the user quits. Return None to leave it to another plugin; when none answers, ``--tui``
    fails with a message naming what to install.

    Example::

        @higgs.hookimpl
        def higgs_serve_frontend(app, host, port, settings):
            return run_dashboard_around(app, host, port)
    """


@hookspec
def higgs_request_finished(record: RequestRecord) -> None:
    """A client request finished (successfully or not): usage, latency, route and outcome.

    Fire-and-forget on the event loop: must not block or raise. Metrics and logging plugins use it.

    Example::

        @higgs.hookimpl
        def higgs_request_finished(record):
            print(record.model, record.status, record.latency_ms)
    """
