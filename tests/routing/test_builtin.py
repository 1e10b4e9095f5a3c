"""The built-in routing strategies: local names, [[routes]] patterns, balancing, fallback, [default]."""

from __future__ import annotations

import pytest

from higgs.config import HiggsSettings
from higgs.errors import ConfigError, UnknownModelError
from higgs.interfaces import Provider, RouteQuery
from higgs.messages import ModelInfo
from higgs.routing.builtin import (
    DefaultRouter,
    LocalRouter,
    PatternRouter,
    alias_models,
    explain_route,
    higgs_routers,
    literal_name,
    route_aliases,
)


class Local(Provider):
    local = True

    def __init__(self, models: dict[str, str]) -> None:
        self.name = "higgs"
        self.models = models  # name -> path

    def serves(self, model: str) -> bool:
        return model in self.models or model in self.models.values()

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m, owned_by="higgs", kind="local") for m in self.models]


class Remote(Provider):
    def __init__(self, name: str, busy: int = 0) -> None:
        self.name = name
        self.busy = busy

    def state(self) -> dict[str, int]:
        return {"in_flight": self.busy}


def settings(**data) -> HiggsSettings:
    return HiggsSettings.model_validate(data)


def services(**extra: Provider) -> dict[str, Provider]:
    return {"higgs": Local({"smol": "/models/smol"}), "oa": Remote("oa"), "an": Remote("an"), **extra}


def chain(cfg: HiggsSettings, svc: dict[str, Provider]):
    return [spec.factory(cfg, svc) for spec in sorted(higgs_routers(), key=lambda s: s.order)]


def q(model: str) -> RouteQuery:
    return RouteQuery(model=model, operation="chat")


async def test_local_by_name_and_path():
    router = LocalRouter(settings(), services())
    by_name = await router.route(q("smol"))
    assert by_name is not None and by_name.providers == ("higgs",) and by_name.rule == "local"
    assert (await router.route(q("/models/smol"))) is not None
    assert await router.route(q("gpt-4o")) is None


async def test_pattern_is_unanchored_search_in_file_order_with_rewrite():
    cfg = settings(routes=[
        {"pattern": "opus", "provider": "an", "model": "claude-opus-4-6"},
        {"pattern": "^claude-", "provider": "oa"},
        {"pattern": "gpt", "provider": "oa"},
    ])
    router = PatternRouter(cfg, services())
    d = await router.route(q("claude-opus-4-6"))
    assert d is not None and d.providers == ("an",) and d.rule == "pattern:opus" and d.method == "pattern"
    assert d.model == "claude-opus-4-6"
    d = await router.route(q("my-opus"))
    assert d is not None and d.model == "claude-opus-4-6"
    d = await router.route(q("claude-sonnet"))
    assert d is not None and d.providers == ("oa",) and d.model == "claude-sonnet"
    assert await router.route(q("xclaude-")) is None  # ^ anchors as usual
    assert await router.route(q("llama")) is None


async def test_route_to_local_provider_and_fallback_order():
    cfg = settings(routes=[
        {"pattern": "^fast$", "provider": "higgs", "model": "smol", "name": "fast"},
        {"pattern": "gpt", "provider": "oa", "fallback": ["an", "higgs"]},
    ])
    router = PatternRouter(cfg, services())
    d = await router.route(q("fast"))
    assert d is not None and d.providers == ("higgs",) and d.model == "smol" and d.rule == "pattern:fast"
    d = await router.route(q("gpt-4o"))
    assert d is not None and d.providers == ("oa", "an", "higgs")


async def test_round_robin_rotates_and_keeps_the_others_as_failover():
    cfg = settings(routes=[{"pattern": ".", "providers": ["oa", "an"], "strategy": "round_robin",
                            "fallback": ["higgs"]}])
    router = PatternRouter(cfg, services())
    orders = [(await router.route(q("m"))).providers for _ in range(4)]
    assert orders == [("oa", "an", "higgs"), ("an", "oa", "higgs")] * 2


async def test_least_busy_prefers_the_idlest_provider():
    svc = services(oa=Remote("oa", busy=5), an=Remote("an", busy=1))
    cfg = settings(routes=[{"pattern": ".", "providers": ["oa", "an"], "strategy": "least_busy"}])
    router = PatternRouter(cfg, svc)
    assert (await router.route(q("m"))).providers == ("an", "oa")
    svc["an"].busy = 9
    assert (await router.route(q("m"))).providers == ("oa", "an")


def test_config_errors_name_the_route():
    with pytest.raises(ConfigError, match=r"#1.*invalid regex"):
        PatternRouter(settings(routes=[{"pattern": "(", "provider": "oa"}]), services())
    with pytest.raises(ConfigError, match=r"unknown provider 'nope'"):
        PatternRouter(settings(routes=[{"pattern": "x", "provider": "nope"}]), services())
    with pytest.raises(ConfigError, match=r"strategy"):
        PatternRouter(settings(routes=[{"pattern": "x", "providers": ["oa"], "strategy": "random"}]), services())
    with pytest.raises(ConfigError, match=r"provider"):
        PatternRouter(settings(routes=[{"pattern": "x"}]), services())
    with pytest.raises(ConfigError, match=r"\[default\] provider 'gone'"):
        DefaultRouter(settings(default={"provider": "gone"}), services())


async def test_default_local_only_is_a_404_listing_models_and_aliases():
    cfg = settings(routes=[{"pattern": "^fast$", "provider": "higgs", "model": "smol"}])
    with pytest.raises(UnknownModelError) as info:
        await DefaultRouter(cfg, services()).route(q("gpt-9"))
    assert info.value.status == 404
    assert "gpt-9" in str(info.value) and "smol" in str(info.value) and "fast" in str(info.value)


async def test_default_remote_with_rewrite():
    d = await DefaultRouter(settings(default={"provider": "oa", "model": "gpt-4o-mini"}), services()).route(q("x"))
    assert d.providers == ("oa",) and d.model == "gpt-4o-mini" and d.rule == "default"


async def test_chain_order_local_then_pattern_then_default():
    cfg = settings(routes=[{"pattern": "smol|gpt", "provider": "oa"}], default={"provider": "an"})
    routers = chain(cfg, services())
    assert [r.name for r in routers] == ["local", "pattern", "default"]
    assert (await explain_route(routers, q("smol")))[1].method == "local"
    assert (await explain_route(routers, q("gpt-4o")))[1].providers == ("oa",)
    router, decision = await explain_route(routers, q("llama"))
    assert router.name == "default" and decision.providers == ("an",)
    assert any("pattern #1" in line for r in routers for line in r.explain())


def test_services_object_with_providers_attribute():
    class Services:
        providers = services()

    assert PatternRouter(settings(routes=[{"pattern": "x", "provider": "oa"}]), Services()).routes


def test_aliases_only_for_literal_patterns_with_rewrite():
    cfg = settings(routes=[
        {"pattern": "^fast$", "provider": "higgs", "model": "smol"},
        {"pattern": "opus", "provider": "an", "model": "claude-opus-4-6"},
        {"pattern": "claude-.*", "provider": "an", "model": "claude-x"},
        {"pattern": "gpt", "provider": "oa"},
    ])
    assert route_aliases(cfg) == [("fast", "smol", "higgs"), ("opus", "claude-opus-4-6", "an")]
    assert [(m.id, m.owned_by, m.kind) for m in alias_models(cfg)] == [("fast", "higgs", "alias"),
                                                                        ("opus", "an", "alias")]
    assert literal_name(r"^a\.b$") == "a.b" and literal_name("a|b") is None


def test_half_anchored_patterns_are_prefix_rules_not_aliases():
    """Regression: ``^claude-`` with a rewrite was listed in /v1/models (and 404 hints) as a model 'claude-'."""
    cfg = settings(routes=[
        {"pattern": "^claude-", "provider": "an", "model": "claude-x"},
        {"pattern": "-mini$", "provider": "an", "model": "claude-y"},
        {"pattern": r"^cost\$$", "provider": "an", "model": "claude-z"},
    ])
    assert route_aliases(cfg) == [("cost$", "claude-z", "an")]
    assert literal_name("^claude-") is None and literal_name("-mini$") is None and literal_name(r"ab\$") == "ab$"
