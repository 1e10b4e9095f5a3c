"""``higgs doctor``: check a profile's configuration, plugins, models, providers and port, offline-first.

Each check yields ``ok``, ``warn`` or ``fail``; any ``fail`` makes the exit status 1. Provider probes use
a short timeout and reveal no secrets: keys are sent to their own upstream only, never printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from cyclopts import Parameter

from higgs.cli.daemon import healthy, port_free, port_owner
from higgs.runtime import RuntimePaths, base_url, check_profile, read_instance

if TYPE_CHECKING:
    from higgs.config import HiggsSettings
    from higgs.interfaces import Provider
    from higgs.registry import Registry

Status = Literal["ok", "warn", "fail"]
PROBE_TIMEOUT = 5.0


@dataclass
class Check:
    """One line of the report."""

    area: str
    name: str
    status: Status
    message: str


class Report:
    """The checks run so far."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, area: str, name: str, status: Status, message: str) -> None:
        self.checks.append(Check(area, name, status, message))

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "failures": sum(c.status == "fail" for c in self.checks),
                "warnings": sum(c.status == "warn" for c in self.checks), "checks": [asdict(c) for c in self.checks]}

    def text(self) -> str:
        marks = {"ok": "  ok ", "warn": " warn", "fail": " FAIL"}
        lines, area = [], None
        for check in self.checks:
            if check.area != area:
                area = check.area
                lines.append(f"{area}:")
            lines.append(f"{marks[check.status]}  {check.name}: {check.message}")
        fails, warns = self.as_dict()["failures"], self.as_dict()["warnings"]
        verdict = "everything looks fine" if not fails else f"{fails} problem{'s' * (fails != 1)} found"
        lines.append(f"\n{verdict}" + (f" ({warns} warning{'s' * (warns != 1)})" if warns else ""))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------


def run_checks(profile: str | None = None, config: str | None = None, *,
               probe_timeout: float = PROBE_TIMEOUT) -> Report:
    """Run every check for a profile (or a config file) and return the report."""
    from higgs.errors import ConfigError
    from higgs.settings_loader import load_settings, registry_problems

    report = Report()
    try:
        profile = check_profile(profile)
        loaded = load_settings(config=config, profile=profile)
    except (ConfigError, ValueError) as err:
        report.add("config", "file", "fail", str(err))
        return report
    settings = loaded.settings
    report.add("config", "file", "ok", f"{loaded.path} is valid" if loaded.exists else
               f"{loaded.path} does not exist: using defaults")
    registry = _check_plugins(report, settings)
    for warning in loaded.warnings_except(registry.server_keys() if registry else []):
        report.add("config", "warning", "warn", warning)
    if registry is None:
        return report
    for problem in registry_problems(settings, registry.formats, registry.providers):
        report.add("config", "plugins", "fail", problem)
    _check_models(report, settings, registry)
    _check_providers(report, settings, registry, probe_timeout)
    _check_port(report, settings, profile)
    return report


def _check_plugins(report: Report, settings: HiggsSettings) -> Registry | None:
    from higgs.errors import PluginError
    from higgs.plugins import load_plugins
    from higgs.registry import Registry

    loaded = load_plugins(enabled=settings.plugins.enabled, disabled=settings.plugins.disabled)
    for info in loaded.infos.values():
        if info.status == "error":
            report.add("plugins", info.name, "fail", f"{info.error}" + (" (required by [plugins] enabled)"
                                                                          if info.required else ""))
    try:
        registry = Registry.build(loaded, strict=True)
    except PluginError as err:
        report.add("plugins", "registry", "fail", str(err))
        return None
    for info in loaded.infos.values():
        if info.status == "error" and info.error and info.error.startswith("registration"):
            report.add("plugins", info.name, "fail", info.error)
    count = len(loaded.loaded)
    report.add("plugins", "loaded", "ok" if registry.formats else "fail",
               f"{count} plugin{'s' * (count != 1)} loaded; formats: {', '.join(sorted(registry.formats)) or 'none'}"
               f"; provider kinds: {', '.join(sorted(registry.providers)) or 'none'}")
    return registry


def hub_cache() -> Path:
    """The Hugging Face hub cache (``HF_HUB_CACHE``, ``HF_HOME``/hub, or ``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expanduser(home)) / "hub"


def _cached_snapshot(repo_id: str) -> Path | None:
    snapshots = hub_cache() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return None
    found = sorted((p for p in snapshots.iterdir() if (p / "config.json").exists()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~", "$")) or os.path.exists(os.path.expanduser(path)) or path.endswith(".gguf")


def _check_models(report: Report, settings: HiggsSettings, registry: Registry) -> None:
    local = registry.local_provider_spec()
    if not settings.models:
        if local is not None:
            report.add("models", "default", "ok", f"no [[models]]: the local plugin ({local.name}) serves its "
                                                  "embedded default model")
        return
    if local is None:
        report.add("models", "local engine", "fail", "[[models]] are configured but no local provider plugin is "
                                                     "loaded (install or enable higgs-mlx)")
    for model in settings.models:
        label = model.name or model.path
        path = os.path.expandvars(os.path.expanduser(model.path))
        if _looks_local(model.path):
            target = Path(path)
            if not target.exists():
                report.add("models", label, "fail", f"path {path} does not exist")
                continue
            if target.is_file():
                status: Status = "ok" if target.suffix == ".gguf" else "fail"
                report.add("models", label, status, f"GGUF file {path} (imported on first use)" if status == "ok"
                           else f"{path} is a file but not a .gguf; expected a model folder with config.json")
                continue
            _check_model_dir(report, label, target, registry)
        else:
            snapshot = _cached_snapshot(model.path)
            if snapshot is None:
                report.add("models", label, "warn", f"'{model.path}' is not in the Hugging Face cache ({hub_cache()});"
                                                    " `higgs serve` asks before downloading it, offline it fails")
                continue
            _check_model_dir(report, label, snapshot, registry, cached=True)


def _check_model_dir(report: Report, label: str, folder: Path, registry: Registry, *, cached: bool = False) -> None:
    where = f"cached at {folder}" if cached else str(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        report.add("models", label, "fail", f"{where}: no config.json (not an MLX/safetensors model folder)")
        return
    except (OSError, ValueError) as err:
        report.add("models", label, "fail", f"{where}: config.json is unreadable: {err}")
        return
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not model_type:
        report.add("models", label, "fail", f"{where}: config.json has no model_type")
    elif model_type not in registry.architectures:
        known = ", ".join(sorted(registry.architectures)) or "none installed"
        report.add("models", label, "fail", f"{where}: no architecture plugin serves model_type '{model_type}' "
                                            f"(installed: {known})")
    elif not any(folder.glob("*.safetensors")):
        report.add("models", label, "fail", f"{where}: no *.safetensors weights")
    else:
        spec = registry.architectures[model_type]
        report.add("models", label, "ok", f"{where}: model_type '{model_type}' (architecture {spec.name})")


def _check_providers(report: Report, settings: HiggsSettings, registry: Registry, timeout: float) -> None:
    from higgs.errors import HiggsError
    from higgs.server.app import build_formats, build_providers

    if not settings.provider:
        report.add("providers", "remote", "ok", "none configured")
    try:
        providers = build_providers(settings, registry, build_formats(registry))
    except HiggsError as err:
        report.add("providers", "config", "fail", str(err))
        return
    remote = {n: p for n, p in providers.items() if not p.local and n in settings.provider}
    if remote:
        results = asyncio.run(_probe_all(remote, timeout))
        for name, (status, message) in results.items():
            report.add("providers", name, status, message)
    if settings.default.provider not in providers:
        report.add("providers", "default", "fail", f"[default] provider '{settings.default.provider}' is not "
                                                   "available (no local provider plugin loaded)")


async def _probe_all(providers: dict[str, Provider], timeout: float) -> dict[str, tuple[Status, str]]:
    results = await asyncio.gather(*(probe_provider(p, timeout) for p in providers.values()))
    return dict(zip(providers, results, strict=True))


async def probe_provider(provider: Provider, timeout: float = PROBE_TIMEOUT) -> tuple[Status, str]:
    """Ask a remote provider's upstream for its model list: reachable? key accepted?"""
    import aiohttp

    url_of = getattr(provider, "url", None)
    fmt = getattr(provider, "format", None)
    if not callable(url_of) or fmt is None:
        return "warn", "not an HTTP upstream higgs knows how to probe; skipped"
    url = url_of(getattr(provider, "models_path", "/v1/models"))
    headers = dict(getattr(provider, "default_headers", {}) or {})
    key = getattr(provider, "api_key", None)
    if key:
        headers.update(fmt.auth_headers(key))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(url, headers=headers) as resp:
                status = resp.status
    except TimeoutError:
        return "fail", f"{url}: no answer within {timeout:g} s"
    except aiohttp.ClientError as err:
        return "fail", f"{url}: unreachable ({type(err).__name__}: {err})"
    if status in (401, 403):
        hint = "the configured api_key was rejected" if key else "it wants an API key: set api_key"
        return "fail", f"{url}: HTTP {status}, {hint}"
    if status < 400:
        return "ok", f"{url}: reachable, HTTP {status}" + (", key accepted" if key else "")
    if status == 404:
        return "warn", f"{url}: reachable, but it has no model list (HTTP 404)"
    return "fail", f"{url}: HTTP {status}"


def _check_port(report: Report, settings: HiggsSettings, profile: str | None) -> None:
    host, port = settings.server.host, settings.server.port
    paths = RuntimePaths.for_profile(profile)
    mine = read_instance(paths)
    if mine is not None and mine.port == port:
        live = healthy(base_url(host, port), timeout=2.0)
        report.add("server", "port", "ok" if live else "fail",
                   f"{port} is held by this profile's instance (pid {mine.pid})" +
                   ("" if live else ", which does not answer /health"))
        return
    owner = port_owner(port, exclude=profile)
    if owner is not None:
        report.add("server", "port", "fail", f"{port} is used by higgs profile '{owner.profile or 'default'}' "
                                             f"(pid {owner.pid}); give this profile another [server] port")
    elif not port_free(host, port):
        report.add("server", "port", "fail", f"{port} on {host} is in use by another program")
    else:
        report.add("server", "port", "ok", f"{host}:{port} is free")


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def doctor(
    *,
    profile: Annotated[str | None, Parameter(help="Check this profile (config.NAME.toml).")] = None,
    config: Annotated[str | None, Parameter(help="Check this config file instead.")] = None,
    json_output: Annotated[bool, Parameter(name="--json", negative="", help="Print JSON.")] = False,
    timeout: Annotated[float, Parameter(help="Seconds per provider probe.")] = PROBE_TIMEOUT,
) -> int:
    """Check configuration, plugins, models, providers and the port; exit 1 on any failure."""
    report = run_checks(profile, config, probe_timeout=timeout)
    if json_output:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.text())
    return 0 if report.ok else 1


def failures(report: Report) -> Iterable[Check]:
    """The failed checks (for tests and scripts)."""
    return (c for c in report.checks if c.status == "fail")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(doctor())
