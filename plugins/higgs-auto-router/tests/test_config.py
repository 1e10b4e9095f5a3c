"""Broken auto-router configuration fails at load with messages naming the key; registration is cheap."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from higgs.errors import ConfigError
from higgs.routing.builtin import PatternRouter, alias_models
from higgs.settings_loader import build_settings
from higgs.testing import FakeProvider

import higgs_auto_router
from higgs_auto_router.router import AutoRouter


def _load(**data):
    return build_settings(data, "config.toml")[0]


def _problems(**data) -> str:
    with pytest.raises(ConfigError) as err:
        _load(**data)
    return str(err.value)


ROUTE = {"name": "code", "description": "coding", "provider": "higgs", "model": "m"}


def test_registered_under_the_higgs_entry_point_group_at_order_10():
    (entry,) = [e for e in entry_points(group="higgs") if e.name == "auto-router"]
    assert entry.load() is higgs_auto_router
    (spec,) = higgs_auto_router.higgs_routers()
    assert spec.name == "auto" and spec.order == 10


def test_registration_imports_no_model_code():
    heavy = "('mlx', 'mlx_lm', 'outlines_core', 'higgs_mlx', 'transformers')"
    code = f"import sys, higgs_auto_router; print([m for m in sys.modules if m.split('.')[0] in {heavy}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_description_without_name_and_duplicate_names():
    text = _problems(routes=[{"pattern": "a", "provider": "higgs", "description": "d"},
                             {"name": "x", "pattern": "b", "provider": "higgs"},
                             {"name": "x", "pattern": "c", "provider": "higgs"}])
    assert "config.toml: routes[0].description: a description needs a name" in text
    assert "routes[2].name: duplicate route name 'x' (also routes[1])" in text


def test_reserved_and_unreadable_candidate_names():
    text = _problems(routes=[{**ROUTE, "name": "none"}, {**ROUTE, "name": "Other"}, {**ROUTE, "name": 'a"b'}])
    assert "routes[0].name: 'none' is the auto-router's answer for 'no route fits'" in text
    assert "routes[1].name: 'Other'" in text
    assert "routes[2].name: 'a\"b': a route the auto-router can pick needs a name without quotes" in text


def test_classifier_model_must_be_a_local_model():
    text = _problems(models=[{"path": "/m/a", "name": "a"}], routes=[ROUTE],
                     auto_router={"enabled": True, "model": "katanemo/Arch-Router-1.5B"})
    assert ("auto_router.model: 'katanemo/Arch-Router-1.5B' is not a local model; add it as a [[models]] entry"
            in text)
    assert "auto_router.model: missing" in _problems(models=[{"path": "/m/a"}], routes=[ROUTE],
                                                     auto_router={"enabled": True})
    # by name or by path; the embedded default when no [[models]]
    assert _load(models=[{"path": "/m/a", "name": "a"}], routes=[ROUTE],
                 auto_router={"enabled": True, "model": "/m/a"}).auto_router.model == "/m/a"
    assert _load(routes=[ROUTE], auto_router={"enabled": True}).auto_router.model is None
    settings = _load(models=[{"path": "~/m/a"}], routes=[ROUTE], auto_router={"enabled": True, "model": "~/m/a"})
    assert AutoRouter(settings, {}).model == settings.models[0].path and not settings.models[0].path.startswith("~")
    # a disabled auto-router is not checked
    assert not _load(routes=[ROUTE], auto_router={"model": "nowhere"}).auto_router.enabled


def test_schema_errors_name_the_key_and_value():
    text = _problems(auto_router={"timeout_ms": 0, "answer": "maybe", "history_tokens": 3, "cache_size": -1})
    assert "auto_router.timeout_ms: Input should be greater than or equal to 1 (got 0)" in text
    assert "auto_router.answer: Input should be 'constrained' or 'lenient' (got 'maybe')" in text
    assert "auto_router.history_tokens" in text and "auto_router.cache_size" in text


def test_auto_only_route_needs_no_pattern_and_is_not_matched_by_patterns():
    settings = _load(routes=[{"name": "code", "description": "coding", "provider": "higgs", "model": "m"},
                             {"name": "plain", "pattern": "^plain$", "provider": "higgs", "model": "p"}])
    patterns = PatternRouter(settings)
    assert [r.label for r in patterns.routes] == ["plain"] and patterns.match("code") is None
    assert [m.id for m in alias_models(settings)] == ["plain"]
    assert "routes[0].pattern: missing" in _problems(routes=[{"name": "code", "provider": "higgs"}])


def test_enabled_without_a_local_engine_is_a_config_error():
    settings = _load(routes=[{**ROUTE, "provider": "up"}], provider={"up": {"url": "http://127.0.0.1:1"}},
                     auto_router={"enabled": True})
    with pytest.raises(ConfigError, match="no local engine to run the classifier: install higgs-mlx"):
        AutoRouter(settings, {"up": FakeProvider()})


def test_explain_lists_candidates():
    settings = _load(routes=[ROUTE, {"name": "chat", "description": "small talk", "provider": "higgs"}],
                     auto_router={"enabled": True, "timeout_ms": 500})
    lines = AutoRouter(settings, {}).explain()
    assert "chat requests for model 'auto' classified by local model 'default'" in lines[0]
    assert "timeout 500 ms" in lines[0]
    assert lines[1:] == ["  auto:code -> higgs as model 'm': coding",
                         "  auto:chat -> higgs (client's model): small talk"]
    assert AutoRouter(_load(), {}).explain() == ["auto: off ([auto_router] enabled = false)"]
