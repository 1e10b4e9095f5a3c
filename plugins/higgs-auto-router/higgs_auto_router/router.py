"""``AutoRouter``: the routing strategy (order 10) that asks a local model which described route fits.

It decides for a chat request whose model is ``auto``, and for every chat request when ``[auto_router]
force = true``. The candidates are the ``[[routes]]`` entries with a ``name`` and a ``description``. The
answer ``other`` (no route fits), a timeout or a failed classification returns None, so the normal order
(local names, patterns, default) applies. A decision's rule is ``auto:<name>`` and its method ``auto``
(the ``x-higgs-route`` header and the metrics show both).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from higgs.config import LOCAL_PROVIDER, HiggsSettings, RouteSettings
from higgs.errors import ConfigError, RoutingError
from higgs.interfaces import Provider, RouteDecision, RouteQuery, Router
from higgs.routing.balance import Balancer, in_flight
from higgs.routing.builtin import provider_map
from higgs.settings_loader import expand_path

from higgs_auto_router.cache import DecisionCache, prefix_keys
from higgs_auto_router.classifier import MlxClassifier, Verdict
from higgs_auto_router.prompt import Candidate, conversation_items

log = logging.getLogger("higgs.auto_router")

#: The model name that asks for classification.
AUTO_MODEL = "auto"
#: The classifier when ``[auto_router] model`` is unset and no ``[[models]]`` are configured.
DEFAULT_CLASSIFIER = "default"


@dataclass
class _Target:
    """Where a candidate route sends requests."""

    index: int
    settings: RouteSettings
    balancer: Balancer
    fallback: tuple[str, ...]


@dataclass
class Outcome:
    """How one request was (or was not) classified, for ``higgs route`` and the logs."""

    route: str | None
    how: str  # "classified", "cached", "timeout", "failed", "skipped"
    detail: str = ""
    verdict: Verdict | None = None

    def describe(self) -> str:
        """One line for ``higgs route``."""
        target = f"route '{self.route}'" if self.route else "no route (normal order applies)"
        if self.how == "classified" and self.verdict is not None:
            v = self.verdict
            return (f"classifier answered {v.answer!r} -> {target} in {v.seconds * 1000:.0f} ms "
                    f"({v.prompt_tokens} prompt tokens, {v.output_tokens} generated)")
        if self.how == "cached":
            return f"remembered decision for this conversation ({self.detail}) -> {target}"
        return f"{self.how}: {self.detail} -> {target}"


class AutoRouter(Router):
    """Classifies conversations onto the routes that have a name and a description."""

    name = "auto"

    def __init__(self, settings: HiggsSettings, services: Any = None, *, classifier: MlxClassifier | None = None
                 ) -> None:
        auto = settings.auto_router
        self.enabled = auto.enabled
        self.force = auto.force
        self.timeout = auto.timeout_ms / 1000
        self.model = auto.model or (settings.models[0].name or settings.models[0].path if settings.models
                                    else DEFAULT_CLASSIFIER)
        if not any(self.model in (m.name, m.path) for m in settings.models):
            self.model = expand_path(self.model)  # [[models]] paths are stored expanded (~, $VARS)
        self.candidates: list[Candidate] = []
        self.targets: dict[str, _Target] = {}
        self._providers: Mapping[str, Provider] = provider_map(services)
        for index, route in enumerate(settings.routes):
            if route.name and route.description:
                names = list(route.providers) or ([route.provider] if route.provider else [])
                self.candidates.append(Candidate(route.name, " ".join(route.description.split())))
                self.targets[route.name] = _Target(
                    index, route, Balancer(names, route.strategy, lambda n: in_flight(self._providers, n)),
                    tuple(p for p in route.fallback if p not in names))
        self.cache = DecisionCache(auto.cache_size)
        self._classifier = classifier
        self._mode = auto.answer
        self._history_tokens = auto.history_tokens
        self._explaining: list[Provider] | None = None
        #: Set once the warm-up classification at server start succeeded.
        self.warmed = False
        if self.enabled and self._providers and not any(getattr(p, "local", False) for p in self._providers.values()):
            raise ConfigError("[auto_router] is enabled, but there is no local engine to run the classifier: "
                              "install higgs-mlx (or set [auto_router] enabled = false)")
        if self.enabled and not self.candidates:
            log.warning("[auto_router] is enabled but no [[routes]] entry has a name and a description: "
                        "requests for model 'auto' will be refused")

    # -- the classifier ---------------------------------------------------------------------------
    def _local(self) -> Provider:
        provider = self._providers.get(LOCAL_PROVIDER) or next(
            (p for p in self._providers.values() if getattr(p, "local", False)), None)
        if provider is None:
            raise RoutingError("The auto-router needs the local engine to classify requests, and no local "
                               "provider is installed (install higgs-mlx).")
        return provider

    def classifier(self) -> MlxClassifier:
        """The classifier on the local provider (built on first use)."""
        if self._classifier is None:
            self._classifier = MlxClassifier(self._local(), self.model, mode=self._mode,
                                             history_tokens=self._history_tokens)
        return self._classifier

    async def _ensure_loaded(self, classifier: MlxClassifier) -> None:
        """In ``higgs route`` (nothing started yet), start the local provider so the classifier can run."""
        if self._explaining is not None and not classifier.loaded():
            await classifier.provider.start()
            self._explaining.append(classifier.provider)

    @contextlib.asynccontextmanager
    async def explaining(self) -> AsyncIterator[None]:
        """For ``higgs route``: load the classifier's provider on demand, and close it afterwards."""
        self._explaining = []
        try:
            yield
        finally:
            for provider in self._explaining:
                await provider.close()
            self._explaining = None

    async def warm_up(self) -> None:
        """Classify a one-line conversation once, so the first request does not pay for building the
        constraint's token index (seconds for a large vocabulary) or for kernel set-up."""
        if not (self.enabled and self.candidates):
            return
        started = time.perf_counter()
        try:
            verdict = await self.classifier().classify(self.candidates, [{"role": "user", "content": "hello"}])
        except Exception as err:  # a failed warm-up is reported; requests still fall back on failures
            log.warning("auto-router: warm-up classification failed (%s: %s)", type(err).__name__, err)
            return
        self.warmed = True
        log.info("auto-router ready: classifier '%s' answered %r in %.0f ms", self.model, verdict.answer,
                 (time.perf_counter() - started) * 1000)

    # -- deciding ---------------------------------------------------------------------------------
    def applies(self, query: RouteQuery) -> bool:
        """Whether this request is to be classified (model ``auto``, or any request when forced)."""
        return self.enabled and (query.model == AUTO_MODEL or self.force)

    async def route(self, query: RouteQuery) -> RouteDecision | None:
        """Classify the conversation; a decision for the chosen route, or None to let the next strategy try."""
        decision, _ = await self.explain_route(query)
        return decision

    async def explain_route(self, query: RouteQuery) -> tuple[RouteDecision | None, list[str]]:
        """``route`` plus a line saying how the decision was made (``higgs route`` prints it)."""
        if not self.applies(query):
            return None, []
        if query.request is None:
            if query.model == AUTO_MODEL and query.operation == "chat":
                raise RoutingError("The model 'auto' is chosen by classifying the conversation, and there is none "
                                   "(with `higgs route auto`, pass --message TEXT).")
            if query.model == AUTO_MODEL:
                raise RoutingError(f"The model 'auto' is chosen by classifying a chat conversation; {query.operation}"
                                   " requests need a concrete model name.")
            return None, []
        if not self.candidates:
            if query.model == AUTO_MODEL:
                raise RoutingError("The model 'auto' needs routes to choose from: give [[routes]] entries a "
                                   "name and a description.")
            return None, []
        outcome = await self.decide(query)
        log.debug("auto-router: %s", outcome.describe())
        if outcome.route is None:
            return None, [f"auto: {outcome.describe()}"]
        return self._decision(outcome.route, query.model), [f"auto: {outcome.describe()}"]

    async def decide(self, query: RouteQuery) -> Outcome:
        """The route for ``query``'s conversation: remembered, else classified within the timeout."""
        assert query.request is not None
        items = conversation_items(query.request)
        if not items:
            return Outcome(None, "skipped", "the conversation has no text to classify")
        keys = prefix_keys(items)
        hit = self.cache.lookup(keys)
        if hit is not None:
            return Outcome(hit.route, "cached", f"first {hit.messages} of {len(items)} messages")
        classifier = self.classifier()
        started = time.perf_counter()
        await self._ensure_loaded(classifier)  # loading a model is not part of the classification's time
        try:
            async with asyncio.timeout(self.timeout):
                verdict = await classifier.classify(self.candidates, items)
        except TimeoutError:
            elapsed = (time.perf_counter() - started) * 1000
            log.warning("auto-router: classification timed out after %.0f ms (timeout_ms); normal routing applies",
                        elapsed)
            return Outcome(None, "timeout", f"no answer within {self.timeout * 1000:.0f} ms")
        except RoutingError:
            raise
        except Exception as err:  # a classifier failure must not fail the request: normal routing applies
            log.warning("auto-router: classification failed (%s: %s); normal routing applies",
                        type(err).__name__, err)
            return Outcome(None, "failed", f"{type(err).__name__}: {err}")
        self.cache.store(keys[-1], verdict.route)
        return Outcome(verdict.route, "classified", verdict=verdict)

    def _decision(self, name: str, requested: str) -> RouteDecision:
        target = self.targets[name]
        model = target.settings.model
        if model is None:
            if requested == AUTO_MODEL:
                raise RoutingError(
                    f"The auto-router chose route '{name}' ([[routes]] #{target.index + 1}), which has no 'model' "
                    f"to send in place of 'auto'; set model = \"...\" on that route.")
            model = requested
        providers = target.balancer.order() + target.fallback
        return RouteDecision(providers=providers, model=model, rule=f"auto:{name}", method="auto")

    # -- explaining -------------------------------------------------------------------------------
    def explain(self) -> list[str]:
        """What the strategy does and its candidates, for ``higgs route``."""
        if not self.enabled:
            return ["auto: off ([auto_router] enabled = false)"]
        scope = "every chat request (force)" if self.force else "chat requests for model 'auto'"
        lines = [f"auto: {scope} classified by local model '{self.model}' ({self._mode}, timeout "
                 f"{self.timeout * 1000:.0f} ms); 'other' or a timeout falls through to the next rules"]
        for candidate in self.candidates:
            target = self.targets[candidate.name]
            names = ", ".join(target.balancer.names)
            rewrite = f" as model {target.settings.model!r}" if target.settings.model else " (client's model)"
            lines.append(f"  auto:{candidate.name} -> {names}{rewrite}: {candidate.description}")
        if not self.candidates:
            lines.append("  no candidates: give [[routes]] entries a name and a description")
        return lines
