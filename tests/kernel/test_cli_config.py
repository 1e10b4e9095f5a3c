"""``higgs init`` and ``higgs config get|set|path``: round trips that keep comments, validated writes."""

from __future__ import annotations

import json
import stat

from higgs.cli import main
from higgs.cli.init import STARTER_CONFIG
from higgs.settings_loader import load_settings


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_init_writes_a_valid_commented_starter(capsys, _isolated_config):
    code, out, _ = run(capsys, "init")
    path = _isolated_config / "config.toml"
    assert code == 0 and str(path) in out
    assert path.read_text() == STARTER_CONFIG
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it will hold API keys
    loaded = load_settings()
    assert loaded.exists and loaded.warnings == []
    assert loaded.settings.provider == {} and loaded.settings.routes == []  # offline: remote parts commented


def test_init_never_overwrites_without_force(capsys, _isolated_config):
    assert run(capsys, "init")[0] == 0
    path = _isolated_config / "config.toml"
    path.write_text("# mine\n")
    code, _, err = run(capsys, "init")
    assert code == 1 and "already exists" in err and "--force" in err
    assert path.read_text() == "# mine\n"
    assert run(capsys, "init", "--force")[0] == 0
    assert path.read_text() == STARTER_CONFIG


def test_init_profile(capsys, _isolated_config):
    assert run(capsys, "init", "--profile", "work")[0] == 0
    assert (_isolated_config / "config.work.toml").exists()
    assert load_settings(profile="work").exists


def test_config_path(capsys, _isolated_config, tmp_path):
    assert run(capsys, "config", "path")[1].strip() == str(_isolated_config / "config.toml")
    assert run(capsys, "config", "path", "--profile", "x")[1].strip() == str(_isolated_config / "config.x.toml")
    code, _, err = run(capsys, "config", "path", "--profile", "x", "--config", str(tmp_path / "c.toml"))
    assert code == 2 and "cannot be used together" in err


def test_set_get_round_trip_keeps_comments_and_types(capsys, _isolated_config):
    run(capsys, "init")
    path = _isolated_config / "config.toml"
    assert run(capsys, "config", "set", "server.port", "9100")[0] == 0
    assert run(capsys, "config", "set", "server.timeout", "12.5")[0] == 0
    assert run(capsys, "config", "set", "server.host", "::1")[0] == 0
    assert run(capsys, "config", "set", "auto_router.enabled", "true")[0] == 0
    assert run(capsys, "config", "set", "plugins.disabled", '["ollama"]')[0] == 0
    text = path.read_text()
    assert "port = 9100" in text and "timeout = 12.5" in text and 'host = "::1"' in text
    # every comment line of the starter is still there, in order
    comments = [line for line in STARTER_CONFIG.splitlines() if line.lstrip().startswith("#")]
    assert [line for line in text.splitlines() if line.lstrip().startswith("#")] == comments
    assert "# loopback only" in text  # trailing comments kept too
    assert run(capsys, "config", "get", "server.port")[1].strip() == "9100"
    assert run(capsys, "config", "get", "server.host")[1].strip() == "::1"
    assert run(capsys, "config", "get", "plugins.disabled")[1].strip() == '["ollama"]'
    settings = load_settings().settings
    assert settings.server.port == 9100 and settings.auto_router.enabled is True


def test_set_string_field_keeps_digits_as_string_and_redacts(capsys, _isolated_config):
    code, out, _ = run(capsys, "config", "set", "server.api_key", "12345")
    assert code == 0 and "12345" not in out and "**********" in out
    assert 'api_key = "12345"' in (_isolated_config / "config.toml").read_text()
    assert run(capsys, "config", "get", "server.api_key")[1].strip() == "**********"
    assert load_settings().settings.server.api_key.get_secret_value() == "12345"


def test_set_creates_tables_and_array_entries(capsys, _isolated_config):
    assert run(capsys, "config", "set", "provider.up.url", "http://127.0.0.1:9/v1")[0] == 0
    assert run(capsys, "config", "set", "routes[0]", '{pattern = "^gpt-", provider = "up", name = "gpt"}')[0] == 0
    assert run(capsys, "config", "set", "routes.0.model", "gpt-4o-mini")[0] == 0
    route = json.loads(run(capsys, "config", "get", "routes[0]")[1])
    assert route["pattern"] == "^gpt-" and route["model"] == "gpt-4o-mini" and route["provider"] == "up"
    assert load_settings().settings.provider["up"].url == "http://127.0.0.1:9/v1"


def test_invalid_set_is_refused_and_file_untouched(capsys, _isolated_config):
    run(capsys, "init")
    path = _isolated_config / "config.toml"
    before = path.read_text()
    code, _, err = run(capsys, "config", "set", "server.port", "99999")
    assert code == 2 and f"{path}: server.port" in err and "65535" in err
    code, _, err = run(capsys, "config", "set", "default.provider", "nowhere")
    assert code == 2 and "unknown provider 'nowhere'" in err
    code, _, err = run(capsys, "config", "set", "routes[3].pattern", "x")
    assert code == 2 and "start with index 0" in err
    assert path.read_text() == before


def test_get_unknown_key(capsys):
    code, _, err = run(capsys, "config", "get", "server.nope")
    assert code == 1 and "no such key" in err


def test_set_checks_formats_against_installed_plugins_and_warns_on_unknown_keys(capsys, _isolated_config):
    code, _, err = run(capsys, "config", "set", "provider.up.format", "grpc")
    assert code == 2 and "provider.up.format: unknown format 'grpc'" in err
    assert not (_isolated_config / "config.toml").exists()
    code, _, err = run(capsys, "config", "set", "server.prot", "1")
    assert code == 0 and "unknown key 'server.prot'" in err


def test_set_new_key_lands_after_the_tables_last_key_not_after_its_trailing_comments(capsys, _isolated_config):
    """Regression: ``server.api_key`` was appended under the starter's commented ``# [[routes]]`` example."""
    run(capsys, "init")
    path = _isolated_config / "config.toml"
    assert run(capsys, "config", "set", "server.api_key", "gw-secret")[0] == 0
    assert run(capsys, "config", "set", "auto_router.model", "qwen")[0] == 0
    lines = path.read_text().splitlines()
    at = lines.index('api_key = "gw-secret"')
    assert lines[at - 1].startswith("rate_limit = 0") and lines[at + 1].startswith("# api_key = ")
    assert lines[lines.index("[auto_router]") + 2] == 'model = "qwen"'
    comments = [line for line in STARTER_CONFIG.splitlines() if line.lstrip().startswith("#")]
    assert [line for line in lines if line.lstrip().startswith("#")] == comments
    settings = load_settings().settings
    assert settings.server.api_key.get_secret_value() == "gw-secret" and settings.server.port == 8000
    assert settings.auto_router.model == "qwen"
