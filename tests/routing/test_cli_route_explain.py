"""``higgs route``: the explanation of which rule serves a model."""

from __future__ import annotations

from higgs.cli.route import explain, render
from higgs.config import HiggsSettings
from higgs.interfaces import Provider
from higgs.routing.builtin import higgs_routers


class Remote(Provider):
    def __init__(self, name: str, fmt: str, url: str) -> None:
        self.name, self.upstream_format, self.url = name, fmt, url

    def state(self) -> dict[str, str]:
        return {"url": self.url}


def build(config: dict):
    settings = HiggsSettings.model_validate(config)
    providers = {"claude": Remote("claude", "anthropic", "https://api.anthropic.com"),
                 "oai": Remote("oai", "openai", "https://api.openai.com/v1")}
    routers = [spec.factory(settings, providers) for spec in sorted(higgs_routers(), key=lambda s: s.order)]
    return routers, providers


CONFIG = {"routes": [{"pattern": "opus", "provider": "claude", "model": "claude-opus-4-6", "fallback": ["oai"]},
                     {"pattern": "^gpt-", "providers": ["oai", "claude"], "strategy": "round_robin"}]}


async def test_explains_the_matching_route_with_rewrite_and_fallback():
    routers, providers = build(CONFIG)
    report = await explain("my-opus", None, routers, providers)
    decision = report["decision"]
    assert decision["strategy"] == "pattern" and decision["route_index"] == 1 and decision["rule"] == "pattern:opus"
    assert decision["model"] == "claude-opus-4-6"
    assert [p["name"] for p in decision["providers"]] == ["claude", "oai"]
    text = render(report)
    assert "route #1" in text and "fallback:  oai (openai format, https://api.openai.com/v1)" in text
    assert "pattern #2: /^gpt-/ -> oai, claude (round_robin)" in text


async def test_unknown_model_with_local_default_explains_the_404():
    routers, providers = build(CONFIG)
    report = await explain("llama", "hello", routers, providers)
    assert report["decision"] is None and report["error"]["status"] == 404
    assert "not served (404)" in render(report) and "llama" in render(report)


async def test_default_provider():
    routers, providers = build({**CONFIG, "default": {"provider": "oai"}})
    report = await explain("llama", None, routers, providers)
    assert report["decision"]["strategy"] == "default" and report["decision"]["providers"][0]["name"] == "oai"


def test_higgs_route_command_end_to_end(tmp_path, capsys, monkeypatch):
    """The real ``higgs route`` command: config file, installed plugins, exit status."""
    from higgs.cli import main

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no user config leaks in
    config = tmp_path / "routes.toml"
    config.write_text('[provider.claude]\nkind = "anthropic"\nurl = "https://api.anthropic.com"\n\n'
                      '[[routes]]\npattern = "opus"\nprovider = "claude"\nmodel = "claude-opus-4-6"\n')
    assert main(["route", "my-opus", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "rule:      pattern:opus" in out and "claude (anthropic format, https://api.anthropic.com)" in out
    assert main(["route", "llama", "--config", str(config), "--json"]) == 1
    assert '"status": 404' in capsys.readouterr().out
