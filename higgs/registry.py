"""The registry: name -> spec maps built from the registration hooks of every loaded plugin.

Each plugin's hooks are called one at a time so a failure is attributed to the plugin that raised it
(and the plugin dropped). Two plugins that register the same name is a ``PluginError`` naming both
distributions: silently letting one win would make behaviour depend on install order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from higgs.errors import PluginError
from higgs.plugins import LoadedPlugins, PluginInfo
from higgs.specs import ArchitectureSpec, CommandSpec, FormatSpec, ProviderSpec, RouterSpec

log = logging.getLogger(__name__)

#: hook name -> (spec type, key in ``PluginInfo.provides``)
_HOOKS: dict[str, tuple[type, str]] = {
    "higgs_formats": (FormatSpec, "formats"),
    "higgs_providers": (ProviderSpec, "providers"),
    "higgs_routers": (RouterSpec, "strategies"),
    "higgs_architectures": (ArchitectureSpec, "architectures"),
    "higgs_commands": (CommandSpec, "commands"),
}


@dataclass
class Registry:
    """Everything the loaded plugins registered, by name.

    Attributes:
        providers: provider kind -> spec.
        formats: wire format name -> spec.
        routers: strategy name -> spec.
        architectures: ``model_type`` -> spec (one spec appears under each of its model types).
        commands: command name -> spec.
        owners: ``(kind, name)`` -> plugin name, for messages.
        plugins: the loaded plugins (manager + per-plugin info).
    """

    plugins: LoadedPlugins
    providers: dict[str, ProviderSpec] = field(default_factory=dict)
    formats: dict[str, FormatSpec] = field(default_factory=dict)
    routers: dict[str, RouterSpec] = field(default_factory=dict)
    architectures: dict[str, ArchitectureSpec] = field(default_factory=dict)
    commands: dict[str, CommandSpec] = field(default_factory=dict)
    owners: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def pm(self) -> Any:
        """The pluggy plugin manager (for event hooks such as ``higgs_request_finished``)."""
        return self.plugins.pm

    @classmethod
    def build(cls, plugins: LoadedPlugins, *, strict: bool = True) -> Registry:
        """Call every registration hook of every loaded plugin and index the specs.

        Args:
            plugins: the loaded plugins.
            strict: raise on a name conflict; otherwise mark the later plugin as errored and drop it
                (``plugins list`` uses this to show everything).
        """
        registry = cls(plugins=plugins)
        for name in list(plugins.loaded):
            info = plugins.info(name)
            try:
                found = _collect(plugins, name)
            except Exception as err:
                log.debug("plugin %s failed during registration: %s", name, err)
                plugins.unregister(name, err, "registration")
                continue
            try:
                registry._add(info, found)
            except PluginError as err:
                if strict:
                    raise
                plugins.unregister(name, err, "registration")
        return registry

    def _add(self, info: PluginInfo, found: dict[str, list[Any]]) -> None:
        staged: list[tuple[dict[str, Any], str, str, Any]] = []
        for hook, specs in found.items():
            kind = _HOOKS[hook][1]
            target = self._table(kind)
            for spec in specs:
                keys = spec.model_types if isinstance(spec, ArchitectureSpec) else (spec.name,)
                for key in keys:
                    owner = self.owners.get((kind, key))
                    staged_owner = next((info.name for t, k, _, _ in staged if t is target and k == key), None)
                    if owner is not None or staged_owner is not None:
                        raise PluginError(
                            f"{_singular(kind)} '{key}' is registered twice: by {self._describe(owner or info.name)} "
                            f"and by {_describe_info(info)}; disable one of them (--no-plugin NAME)"
                        )
                    staged.append((target, key, kind, spec))
        for target, key, kind, spec in staged:
            target[key] = spec
            self.owners[(kind, key)] = info.name
        for hook, specs in found.items():
            kind = _HOOKS[hook][1]
            names = [s.name for s in specs]
            info.provides.setdefault(kind, []).extend(names)

    def _table(self, kind: str) -> dict[str, Any]:
        tables: dict[str, dict[str, Any]] = {
            "providers": self.providers,
            "formats": self.formats,
            "strategies": self.routers,
            "architectures": self.architectures,
            "commands": self.commands,
        }
        return tables[kind]

    def _describe(self, plugin: str) -> str:
        return _describe_info(self.plugins.infos[plugin])

    def owner(self, kind: str, name: str) -> str | None:
        """The plugin that registered ``name`` of ``kind`` (``providers``, ``formats``, ...)."""
        return self.owners.get((kind, name))

    def local_provider_spec(self) -> ProviderSpec | None:
        """The provider kind that serves ``[[models]]`` (the first local one), if any is installed."""
        return next((s for s in self.providers.values() if s.local), None)

    def server_keys(self) -> list[str]:
        """Dotted ``[server]`` keys the providers read beyond the kernel's schema (``server.max_batch``)."""
        return [f"server.{key}" for spec in self.providers.values() for key in spec.server_keys]

    def provider_spec_for(self, name: str, kind: str | None, fmt: str) -> ProviderSpec | None:
        """The spec a ``[provider.NAME]`` section uses: its ``kind``, else the kind named NAME, else the
        kind named like ``fmt``, else the first non-local kind that speaks ``fmt``."""
        if kind:
            return self.providers.get(kind)
        spec = self.providers.get(name)
        if spec is not None and not spec.local:
            return spec
        # A kind named after the format (``openai`` for format "openai") is the natural reading of a section
        # that names only a format; another plugin that also speaks it must not win by load order.
        spec = self.providers.get(fmt)
        if spec is not None and not spec.local and fmt in spec.formats:
            return spec
        return next((s for s in self.providers.values() if not s.local and fmt in s.formats), None)


def _collect(plugins: LoadedPlugins, name: str) -> dict[str, list[Any]]:
    plugin = plugins.pm.get_plugin(name)
    found: dict[str, list[Any]] = {}
    for hook, (spec_type, _) in _HOOKS.items():
        caller = getattr(plugins.pm.hook, hook)
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            result = impl.function()
            specs = list(_iterate(result, hook))
            for spec in specs:
                if not isinstance(spec, spec_type):
                    raise PluginError(f"{hook}() returned {type(spec).__name__}, expected {spec_type.__name__}")
                if not getattr(spec, "name", ""):
                    raise PluginError(f"{hook}() returned a {spec_type.__name__} without a name")
            found[hook] = specs
    return found


def _iterate(result: Iterable[Any] | Any, hook: str) -> Iterable[Any]:
    if result is None:
        return ()
    if isinstance(result, (str, bytes)) or not isinstance(result, Iterable):
        return (result,)  # a single spec returned bare
    return result


def _describe_info(info: PluginInfo) -> str:
    where = f"{info.package} {info.version}" if info.package else info.module or "explicit registration"
    return f"plugin '{info.name}' ({where})"


def _singular(kind: str) -> str:
    return {"providers": "provider kind", "formats": "format", "strategies": "routing strategy",
            "architectures": "model_type", "commands": "command"}[kind]

