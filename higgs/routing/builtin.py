"""The built-in routing strategies, registered like any plugin's (entry point ``routing``).

Order: ``local`` (20) serves a model the local engine has by name or path, ``pattern`` (30) runs
``[[routes]]`` in file order (regex *search*, first match wins), ``default`` (90) applies ``[default]``.
The auto-router (10) is a separate plugin.

The router factories receive ``(settings, services)``; ``services`` exposes the provider instances by name,
either as a mapping or through a ``providers`` attribute (see ``provider_map``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from higgs.config import LOCAL_PROVIDER, HiggsSettings, RouteSettings
from higgs.errors import ConfigError, UnknownModelError
from higgs.hookspecs import hookimpl
from higgs.interfaces import Provider, RouteDecision, RouteQuery, Router
from higgs.messages import ModelInfo
from higgs.routing.balance import STRATEGIES, Balancer, in_flight
from higgs.specs import RouterSpec


def provider_map(services: Any) -> Mapping[str, Provider]:
    """The provider instances by name from the kernel's ``services`` object (mapping or ``.providers``)."""
    if services is None:
        return {}
    if isinstance(services, Mapping):
        return services
    providers = getattr(services, "providers", None)
    if callable(providers):
        providers = providers()
    return providers if isinstance(providers, Mapping) else {}


def local_providers(providers: Mapping[str, Provider]) -> list[tuple[str, Provider]]:
    """The local providers (``Provider.local``), by instance name."""
    return [(name, p) for name, p in providers.items() if getattr(p, "local", False)]


class LocalRouter(Router):
    """Serves a model the local engine has loaded or configured, by exact name, alias or path."""

    name = "local"

    def __init__(self, settings: HiggsSettings, services: Any = None) -> None:
        self._services = services

    async def route(self, query: RouteQuery) -> RouteDecision | None:
        """Route to the local provider when it serves ``query.model`` exactly."""
        for name, provider in local_providers(provider_map(self._services)):
            if provider.serves(query.model):
                return RouteDecision(providers=(name,), model=query.model, rule="local", method="local")
        return None

    def explain(self) -> list[str]:
        """One line: what the strategy does."""
        return ["local: a model served by the local engine by exact name, alias or path"]


@dataclass
class _Route:
    index: int
    label: str
    regex: re.Pattern[str]
    balancer: Balancer
    fallback: tuple[str, ...]
    model: str | None
    settings: RouteSettings


def auto_only(route: RouteSettings) -> bool:
    """A route with a name and a description but no pattern is a candidate of the auto-router only."""
    return not route.pattern and bool(route.name and route.description)


def _route_label(index: int, route: RouteSettings) -> str:
    return route.name or route.pattern or f"#{index + 1}"


def _compile(index: int, route: RouteSettings, providers: Mapping[str, Provider]) -> _Route:
    where = f"[[routes]] #{index + 1}"
    if route.pattern is None and route.name is None:
        raise ConfigError(f"{where}: a route needs a 'pattern' (a regex searched in the model name) or a 'name'.")
    # A route with only a name is an exact alias.
    source = route.pattern if route.pattern is not None else f"^{re.escape(route.name or '')}$"
    try:
        regex = re.compile(source)
    except re.error as err:
        raise ConfigError(f"{where}: invalid regex pattern {source!r}: {err}") from err
    names = list(route.providers) or ([route.provider] if route.provider else [])
    if not names:
        raise ConfigError(f"{where} ({source!r}): set 'provider' or 'providers'.")
    if route.strategy not in STRATEGIES:
        raise ConfigError(f"{where}: unknown strategy {route.strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    if providers:
        known = set(providers) | {LOCAL_PROVIDER}
        for name in [*names, *route.fallback]:
            if name not in known:
                raise ConfigError(f"{where}: unknown provider {name!r}; configured: {', '.join(sorted(known))}.")
    balancer = Balancer(names, route.strategy, lambda name: in_flight(provider_map(providers), name))
    fallback = tuple(name for name in route.fallback if name not in names)
    return _Route(index, _route_label(index, route), regex, balancer, fallback, route.model, route)


class PatternRouter(Router):
    """``[[routes]]`` in file order: the first whose regex matches anywhere in the model name wins."""

    name = "pattern"

    def __init__(self, settings: HiggsSettings, services: Any = None) -> None:
        self._services = services
        self._settings = settings
        providers = provider_map(services)
        self.routes = [_compile(i, route, providers) for i, route in enumerate(settings.routes)
                       if not auto_only(route)]

    def match(self, model: str) -> _Route | None:
        """The first route whose pattern matches ``model``."""
        for route in self.routes:
            if route.regex.search(model):
                return route
        return None

    async def route(self, query: RouteQuery) -> RouteDecision | None:
        """Apply the first matching route: balanced providers, then fallbacks, optional model rewrite."""
        route = self.match(query.model)
        if route is None:
            return None
        order = route.balancer.order() + route.fallback
        return RouteDecision(providers=order, model=route.model or query.model, rule=f"pattern:{route.label}",
                             method="pattern")

    def list_models(self) -> list[ModelInfo]:
        """Route aliases (literal patterns that rewrite the model) for ``/v1/models``."""
        return alias_models(self._settings)

    def explain(self) -> list[str]:
        """One line per route, in file order."""
        lines = []
        for route in self.routes:
            targets = ", ".join(route.balancer.names)
            if len(route.balancer.names) > 1:
                targets += f" ({route.balancer.strategy})"
            line = f"pattern #{route.index + 1}: /{route.regex.pattern}/ -> {targets}"
            if route.model:
                line += f" as model {route.model!r}"
            if route.fallback:
                line += f", fallback {', '.join(route.fallback)}"
            lines.append(line)
        return lines or ["pattern: no [[routes]] configured"]


_META = re.compile(r"[.^$*+?{}\[\]\\|()]")


def literal_name(pattern: str) -> str | None:
    """The model name a pattern matches exactly when it is a plain or ``^...$``-anchored literal.

    A pattern anchored at one end only (``^claude-``, ``-mini$``) is a prefix or suffix rule, never a name.
    """
    anchored_end = pattern.endswith("$") and not pattern.endswith(r"\$")
    if pattern.startswith("^") != anchored_end:
        return None
    body = pattern[1:-1] if anchored_end else pattern
    unescaped = re.sub(r"\\(.)", r"\1", body)
    if _META.search(re.sub(r"\\.", "", body)) or not unescaped:
        return None
    return unescaped


def route_aliases(settings: HiggsSettings) -> list[tuple[str, str, str]]:
    """``(alias, target model, provider)`` for routes that rewrite one literal name to a concrete model."""
    found = []
    for route in settings.routes:
        if auto_only(route):
            continue
        literal = literal_name(route.pattern) if route.pattern is not None else route.name
        target = route.providers[0] if route.providers else route.provider
        if route.model and literal and target:
            found.append((literal, route.model, target))
    return found


def alias_models(settings: HiggsSettings) -> list[ModelInfo]:
    """``/v1/models`` entries for route aliases that rewrite one name to a concrete model."""
    return [ModelInfo(id=alias, owned_by=provider, kind="alias") for alias, _, provider in route_aliases(settings)]


class DefaultRouter(Router):
    """``[default]``: a provider for everything else, or ``higgs`` (local only: unknown models are a 404)."""

    name = "default"

    def __init__(self, settings: HiggsSettings, services: Any = None) -> None:
        self._services = services
        self._settings = settings
        default = settings.default
        extra = default.model_extra or {}
        self.provider = default.provider
        self.model: str | None = extra.get("model")
        fallback = extra.get("fallback", [])
        self.fallback = tuple(fallback) if isinstance(fallback, list) else ()
        providers = provider_map(services)
        if providers and self.provider != LOCAL_PROVIDER and self.provider not in providers:
            raise ConfigError(f"[default] provider {self.provider!r} is not configured; "
                              f"configured: {', '.join(sorted([*providers, LOCAL_PROVIDER]))}.")

    async def route(self, query: RouteQuery) -> RouteDecision:
        """Send the request to the default provider, or raise ``UnknownModelError`` when local-only."""
        if self.provider == LOCAL_PROVIDER:
            raise UnknownModelError(query.model, await self.available())
        providers = (self.provider, *(p for p in self.fallback if p != self.provider))
        return RouteDecision(providers=providers, model=self.model or query.model, rule="default",
                             method="default")

    async def available(self) -> list[str]:
        """Names a client could use instead: local models and route aliases."""
        names: list[str] = []
        for _, provider in local_providers(provider_map(self._services)):
            try:
                names.extend(m.id for m in await provider.list_models())
            except Exception:  # listing is a courtesy in an error message; never mask the 404
                continue
        names.extend(alias for alias, _, _ in route_aliases(self._settings))
        return list(dict.fromkeys(names))

    def explain(self) -> list[str]:
        """One line: where unmatched models go."""
        if self.provider == LOCAL_PROVIDER:
            return ["default: local only (higgs); unknown models are a 404 listing what is available"]
        return [f"default: everything else -> {self.provider}" + (f" as model {self.model!r}" if self.model else "")]


async def explain_route(routers: Iterable[Router], query: RouteQuery) -> tuple[Router | None, RouteDecision]:
    """Run ``routers`` in order like the gateway does; return the deciding router and its decision.

    Raises whatever the deciding router raises (``UnknownModelError`` for a local-only default).
    """
    for router in routers:
        decision = await router.route(query)
        if decision is not None:
            return router, decision
    raise UnknownModelError(query.model)


@hookimpl
def higgs_routers() -> list[RouterSpec]:
    """Register the built-in strategies: local names (20), ``[[routes]]`` patterns (30), ``[default]`` (90)."""
    return [
        RouterSpec(name="local", factory=LocalRouter, order=20,
                   description="Exact local model names, aliases and paths"),
        RouterSpec(name="pattern", factory=PatternRouter, order=30,
                   description="[[routes]] regex patterns in file order, with rewrite, fallback and balancing"),
        RouterSpec(name="default", factory=DefaultRouter, order=90, description="[default] provider"),
    ]
