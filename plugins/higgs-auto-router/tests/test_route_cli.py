"""``higgs route auto --message TEXT`` explains an auto decision with the real CLI path (plugins from entry
points, the local engine started only to classify, closed afterwards)."""

from __future__ import annotations

import json

import pytest
from higgs.cli.route import route

# the CLI loads installed plugins only: the tiny classifier needs the llama architecture plugin
pytest.importorskip("higgs_arch_llama", reason="higgs route loads architectures from installed plugins")

CONFIG = """
[[models]]
path = "{model}"
name = "router"

[provider.coder]
url = "http://127.0.0.1:9/v1"

[[routes]]
name = "code"
description = "Writing, reviewing or fixing source code"
provider = "coder"
model = "code-model"

[[routes]]
name = "chat"
description = "Small talk"
provider = "higgs"
model = "router"

[auto_router]
enabled = true
model = "router"
"""


@pytest.fixture
def config(tmp_path, tiny_router_model):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(model=tiny_router_model))
    return path


def test_route_auto_with_a_message_runs_the_classifier(config, capsys):
    code = route("auto", message="please fix my python function", config=config, json_=True)
    report = json.loads(capsys.readouterr().out)
    (note,) = report["notes"]
    assert note.startswith("auto: classifier answered ")
    if code == 0:
        decision = report["decision"]
        assert decision["method"] == "auto" and decision["rule"] in ("auto:code", "auto:chat")
        assert decision["model"] == {"auto:code": "code-model", "auto:chat": "router"}[decision["rule"]]
        assert f"-> route '{decision['rule'][5:]}'" in note
    else:  # 'other': nothing else serves the model 'auto' in this config
        assert "-> no route" in note and report["error"]["status"] == 404
    auto_rules = next(r for r in report["rules"] if r["strategy"] == "auto")["lines"]
    assert auto_rules[1] == "  auto:code -> coder as model 'code-model': Writing, reviewing or fixing source code"

    route("auto", message="please fix my python function", config=config)
    text = capsys.readouterr().out
    assert "  note:      auto: classifier answered" in text and "rules, in order:" in text


def test_route_auto_without_a_message_says_what_is_missing(config, capsys):
    assert route("auto", config=config) == 1
    assert "pass --message TEXT" in capsys.readouterr().out


def test_other_models_are_not_classified_without_force(config, capsys):
    route("some-other-model", message="please fix my python function", config=config, json_=True)
    report = json.loads(capsys.readouterr().out)
    assert report["notes"] == [] and report["decision"] is None and report["error"]["strategy"] == "default"
