"""``higgs serve``: load config and plugins, validate, build the app, listen until a signal."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter

from higgs.errors import ConfigError


def serve(
    *,
    model: Annotated[list[str] | None, Parameter(help="Local model (HF id or path); repeatable; adds to the "
                                                      "config file's models.")] = None,
    host: Annotated[str | None, Parameter(help="Address to bind (default 127.0.0.1; IPv6 works).")] = None,
    port: Annotated[int | None, Parameter(help="Port (default 8000).")] = None,
    max_tokens: Annotated[int | None, Parameter(help="Cap on generated tokens for local models.")] = None,
    api_key: Annotated[str | None, Parameter(help="Require this key (Bearer or x-api-key) from clients.")] = None,
    rate_limit: Annotated[int | None, Parameter(help="Requests per minute per client (0 = off).")] = None,
    timeout: Annotated[float | None, Parameter(help="Request timeout in seconds.")] = None,
    batch: Annotated[bool | None, Parameter(help="Continuous batching for local models.")] = None,
    verbose: Annotated[bool, Parameter(help="Debug logging.")] = False,
    config: Annotated[Path | None, Parameter(help="Config file (instead of ~/.config/higgs/config.toml).")] = None,
    profile: Annotated[str | None, Parameter(help="Use config.NAME.toml beside the default config.")] = None,
    plugin: Annotated[list[str] | None, Parameter(help="Enable (require) a plugin; repeatable.")] = None,
    no_plugin: Annotated[list[str] | None, Parameter(name="--no-plugin",
                                                     help="Disable a plugin; repeatable; '*' = all.")] = None,
    yes: Annotated[bool, Parameter(help="Answer yes to confirmations (e.g. downloading a model).")] = False,
    tui: Annotated[bool, Parameter(help="Show a live dashboard while serving (needs a front end: higgs-tui).")] = False,
) -> int:
    """Run the gateway server until SIGINT/SIGTERM."""
    from higgs.plugins import load_plugins
    from higgs.registry import Registry
    from higgs.server.app import make_app
    from higgs.server.runner import is_loopback, serve_app
    from higgs.settings_loader import load_settings, registry_problems

    loaded = load_settings(
        config=config, profile=profile,
        cli={"server.host": host, "server.port": port, "server.max_tokens": max_tokens, "server.api_key": api_key,
             "server.rate_limit": rate_limit, "server.timeout": timeout, "server.batch": batch,
             "server.assume_yes": True if yes else None},
        cli_models=model or (), enable_plugins=plugin or (), disable_plugins=no_plugin or (),
    )
    settings = loaded.settings
    _setup_logging("DEBUG" if verbose else settings.logging.level)
    log = logging.getLogger("higgs")
    plugins = load_plugins(enabled=settings.plugins.enabled, disabled=settings.plugins.disabled)
    plugins.check_required()
    for info in plugins.infos.values():
        if info.status == "error":
            log.warning("plugin %s skipped: %s", info.name, info.error)
    registry = Registry.build(plugins)
    for warning in loaded.warnings_except(registry.server_keys()):
        log.warning("%s", warning)
    plugins.check_required()
    problems = registry_problems(settings, registry.formats, registry.providers)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    if not registry.formats:
        log.warning("no wire format plugin is loaded: the server will answer nothing but /health and /v1/system")

    server = settings.server
    if not is_loopback(server.host) and server.api_key is None:
        banner = "!" * 78
        print(f"{banner}\nWARNING: listening on {server.host} without an API key: anyone who can reach this "
              f"machine\ncan use your local models and your upstream providers' keys. Set --api-key (or "
              f"HIGGS_API_KEY).\n{banner}", file=sys.stderr)

    app = make_app(settings, registry)

    def ready(url: str) -> None:
        names = ", ".join(sorted(plugins.loaded)) or "none"
        print(f"higgs listening on {url}  (plugins: {names}; config: "
              f"{loaded.path if loaded.exists else 'defaults'})", file=sys.stderr, flush=True)

    if tui:  # a front-end plugin runs the server behind its dashboard and owns the terminal
        code = plugins.pm.hook.higgs_serve_frontend(app=app, host=server.host, port=server.port,
                                                   settings=settings)
        if code is None:
            raise ConfigError("--tui needs a front-end plugin (higgs_serve_frontend), e.g. install higgs-tui")
        return int(code)
    try:
        asyncio.run(serve_app(app, server.host, server.port, ready=ready, access_log=verbose))
    except OSError as err:
        raise ConfigError(f"cannot listen on {server.host}:{server.port}: {err.strerror or err}") from err
    return 0


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
