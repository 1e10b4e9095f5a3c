"""Plugin loading: entry points of group ``higgs`` into a pluggy ``PluginManager``, one by one, with a guard.

A plugin that fails to import (or to register) is recorded with its error and skipped, so a broken
plugin never locks an operator out; a plugin that was *explicitly enabled* and fails is an error
(``LoadedPlugins.check_required``). Tests build a manager from explicit modules with
``load_entrypoints=False``, so they never pick up whatever happens to be installed.

Selection (``[plugins]`` table, ``--plugin``/``--no-plugin``):

- every installed plugin loads by default;
- ``disabled = ["name", ...]`` blocks plugins by entry-point name; ``"*"`` blocks all of them;
- ``enabled = ["name", ...]`` marks plugins as required: they load even when blocked (so
  ``disabled = ["*"]`` plus ``enabled`` is an allow-list) and a failure to load them is fatal.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import pluggy

from higgs import hookspecs
from higgs.errors import PluginError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "higgs"
ALL = "*"

PluginStatus = Literal["enabled", "disabled", "error"]


@dataclass
class PluginInfo:
    """What ``higgs plugins list`` shows about one plugin.

    Attributes:
        name: entry-point name (what ``--plugin``/``--no-plugin`` and ``[plugins]`` accept).
        package: the distribution that ships it, when known.
        version: that distribution's version.
        module: the entry point's import target.
        status: ``enabled`` (loaded), ``disabled`` (blocked by selection) or ``error``.
        error: the load or registration error, for ``status == "error"``.
        required: explicitly enabled: a failure is fatal for ``serve``.
        provides: kind (``providers``, ``formats``, ``strategies``, ``architectures``, ``commands``) -> names;
            filled in by the registry.
    """

    name: str
    package: str | None = None
    version: str | None = None
    module: str = ""
    status: PluginStatus = "enabled"
    error: str | None = None
    required: bool = False
    provides: dict[str, list[str]] = field(default_factory=dict)
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``plugins list --json``)."""
        return {
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "module": self.module,
            "status": self.status,
            "error": self.error,
            "required": self.required,
            "provides": {k: list(v) for k, v in self.provides.items() if v},
        }

    def mark_error(self, error: BaseException, when: str) -> None:
        """Record a failure (``when`` is ``import`` or ``registration``)."""
        self.status = "error"
        self.error = f"{when} failed: {type(error).__name__}: {error}"
        self.exception = error


@dataclass
class LoadedPlugins:
    """A plugin manager with every plugin registered, plus what happened to each candidate."""

    pm: pluggy.PluginManager
    infos: dict[str, PluginInfo]

    def info(self, name: str) -> PluginInfo:
        """The record of plugin ``name`` (KeyError if unknown)."""
        return self.infos[name]

    @property
    def loaded(self) -> list[str]:
        """Names of the plugins that are registered and working."""
        return [n for n, i in self.infos.items() if i.status == "enabled"]

    def check_required(self) -> None:
        """Raise ``PluginError`` if an explicitly enabled plugin is missing or broken."""
        for info in self.infos.values():
            if info.required and info.status == "error":
                raise PluginError(f"plugin '{info.name}' was enabled but failed to load: {info.error}") from (
                    info.exception
                )

    def unregister(self, name: str, error: BaseException, when: str) -> None:
        """Drop a plugin that failed after loading (e.g. its registration hook raised)."""
        info = self.infos[name]
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin, name=name)
        info.mark_error(error, when)


def new_plugin_manager() -> pluggy.PluginManager:
    """An empty manager that knows every higgs hookspec."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(
    *,
    enabled: Collection[str] = (),
    disabled: Collection[str] = (),
    load_entrypoints: bool = True,
    plugins: Iterable[object | tuple[str, object]] = (),
) -> LoadedPlugins:
    """Build the plugin manager.

    Args:
        enabled: entry-point names that must load (override ``disabled``; failures are fatal later).
        disabled: entry-point names to skip; ``"*"`` skips every entry point not in ``enabled``.
        load_entrypoints: discover installed plugins of group ``higgs``; tests pass False.
        plugins: extra plugin objects (modules, instances) registered directly, optionally as
            ``(name, obj)``; explicit plugins are never blocked.

    Returns:
        The manager and a ``PluginInfo`` per candidate, in discovery order.
    """
    pm = new_plugin_manager()
    infos: dict[str, PluginInfo] = {}
    required, blocked = set(enabled), set(disabled)
    for item in plugins:
        name, obj = item if isinstance(item, tuple) else (_plugin_name(item), item)
        base, n = name, 1
        while name in infos:  # two explicit plugins of the same class: keep both, distinctly named
            n += 1
            name = f"{base}-{n}"
        info = PluginInfo(name=name, module=getattr(obj, "__name__", type(obj).__name__), required=name in required)
        infos[name] = info
        _register(pm, name, obj, info)
    if load_entrypoints:
        for ep in _entry_points():
            if ep.name in infos:
                log.debug("plugin %s (%s) shadowed by an earlier one of the same name", ep.name, ep.value)
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                package=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
                module=ep.value,
                required=ep.name in required,
            )
            infos[ep.name] = info
            if not info.required and (ep.name in blocked or ALL in blocked):
                info.status = "disabled"
                continue
            try:
                obj = ep.load()
            except Exception as err:  # a broken plugin must never take the server down with it
                log.debug("plugin %s failed to load: %s: %s", ep.name, type(err).__name__, err)
                info.mark_error(err, "import")
                continue
            _register(pm, ep.name, obj, info)
    for name in sorted(required - infos.keys()):
        infos[name] = PluginInfo(name=name, status="error", required=True,
                                 error="not installed (no entry point of group 'higgs' has this name)")
    return LoadedPlugins(pm=pm, infos=infos)


def _register(pm: pluggy.PluginManager, name: str, obj: object, info: PluginInfo) -> None:
    try:
        pm.register(obj, name=name)
    except Exception as err:  # bad hookimpl signature, unknown hook name, duplicate object
        log.debug("plugin %s failed to register: %s", name, err)
        info.mark_error(err, "registration")


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in eps:  # the same distribution can appear twice on sys.path (editable + site-packages)
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            unique.append(ep)
    return unique


def _plugin_name(obj: object) -> str:
    if isinstance(obj, ModuleType):
        return obj.__name__
    return str(getattr(obj, "name", None) or type(obj).__name__)
