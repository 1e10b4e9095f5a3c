"""Config loading: file location, precedence, ``--model`` merging, every validation error, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from higgs.config import DEFAULT_MAX_TOKENS, DEFAULT_PORT
from higgs.errors import ConfigError
from higgs.settings_loader import config_path, load_settings, registry_problems


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_a_file(_isolated_config):
    loaded = load_settings()
    assert not loaded.exists and loaded.path == _isolated_config / "config.toml"
    server = loaded.settings.server
    assert (server.host, server.port, server.max_tokens) == ("127.0.0.1", DEFAULT_PORT, DEFAULT_MAX_TOKENS)
    assert server.timeout == 300 and server.rate_limit == 0 and server.api_key is None
    assert server.max_body_size == 32 * 1024 * 1024


def test_xdg_config_home_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "elsewhere"))
    assert config_path() == tmp_path / "elsewhere" / "higgs" / "config.toml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_path() == tmp_path / "home" / ".config" / "higgs" / "config.toml"


def test_precedence_cli_over_env_over_file_over_defaults(_isolated_config, monkeypatch):
    write(_isolated_config / "config.toml", "[server]\nport = 9001\nmax_tokens = 100\ntimeout = 10\nrate_limit = 5\n")
    monkeypatch.setenv("HIGGS_PORT", "9002")
    monkeypatch.setenv("HIGGS_MAX_TOKENS", "200")
    monkeypatch.setenv("HIGGS_API_KEY", "env-secret")
    server = load_settings(cli={"server.port": 9003, "server.timeout": None}).settings.server
    assert server.port == 9003          # CLI beats env and file
    assert server.max_tokens == 200     # env beats file
    assert server.timeout == 10         # file beats default (a None flag is "not given")
    assert server.rate_limit == 5
    assert server.api_key.get_secret_value() == "env-secret"


def test_every_env_variable(monkeypatch):
    for var, value in {"HIGGS_HOST": "::1", "HIGGS_PORT": "1234", "HIGGS_MAX_TOKENS": "64", "HIGGS_API_KEY": "k",
                       "HIGGS_RATE_LIMIT": "7", "HIGGS_TIMEOUT": "2.5", "HIGGS_MODELS": "a/b, ~/m ,"}.items():
        monkeypatch.setenv(var, value)
    settings = load_settings().settings
    s = settings.server
    assert (s.host, s.port, s.max_tokens, s.rate_limit, s.timeout) == ("::1", 1234, 64, 7, 2.5)
    assert [m.path for m in settings.models] == ["a/b", str(Path("~/m").expanduser())]


def test_cli_models_add_to_file_models_and_win_over_env(_isolated_config, monkeypatch):
    write(_isolated_config / "config.toml", '[[models]]\npath = "org/file-model"\nname = "f"\n')
    monkeypatch.setenv("HIGGS_MODELS", "org/env-model")
    assert [m.path for m in load_settings().settings.models] == ["org/file-model", "org/env-model"]
    models = load_settings(cli_models=["org/cli-a", "org/cli-b", "org/file-model"]).settings.models
    assert [m.path for m in models] == ["org/file-model", "org/cli-a", "org/cli-b"]


def test_bad_env_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("HIGGS_PORT", "eighty")
    with pytest.raises(ConfigError, match="environment variable HIGGS_PORT"):
        load_settings()
    monkeypatch.setenv("HIGGS_PORT", "70000")
    with pytest.raises(ConfigError, match=r"environment variable HIGGS_PORT: server.port: .*65535"):
        load_settings()


def test_bad_cli_value_names_the_flag():
    with pytest.raises(ConfigError, match=r"--port: server.port: .*greater than or equal to 1"):
        load_settings(cli={"server.port": 0})


def test_profile_and_config_file(_isolated_config, tmp_path):
    write(_isolated_config / "config.work.toml", "[server]\nport = 7001\n")
    loaded = load_settings(profile="work")
    assert loaded.settings.server.port == 7001 and loaded.settings.profile == "work"
    custom = write(tmp_path / "custom.toml", "[server]\nport = 7002\n")
    assert load_settings(config=custom).settings.server.port == 7002


def test_config_with_profile_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="--config and --profile cannot be used together"):
        load_settings(config=tmp_path / "x.toml", profile="work")


def test_missing_explicit_files_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(config=tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match=r"profile 'nope' not found.*higgs init --profile nope"):
        load_settings(profile="nope")
    with pytest.raises(ConfigError, match="not a valid profile name"):
        load_settings(profile="../etc")


def test_config_path_expands_home_and_vars(tmp_path, monkeypatch):
    monkeypatch.setenv("CFG_DIR", str(tmp_path))
    write(tmp_path / "c.toml", "")
    assert load_settings(config="$CFG_DIR/c.toml").path == tmp_path / "c.toml"


def test_paths_in_config_are_expanded(_isolated_config, monkeypatch, tmp_path):
    monkeypatch.setenv("MODELS", str(tmp_path))
    write(_isolated_config / "config.toml", '[[models]]\npath = "$MODELS/qwen"\n[[models]]\npath = "~/m"\n'
                                           '[logging.metrics]\npath = "~/higgs.jsonl"\n')
    settings = load_settings().settings
    assert settings.models[0].path == f"{tmp_path}/qwen"
    assert settings.models[1].path == str(Path("~/m").expanduser())
    assert settings.logging.metrics.path == str(Path("~/higgs.jsonl").expanduser())


# -- validation errors: each names the file, the key and the problem -----------------------------------

CASES = {
    "bad regex": ('[provider.up]\nurl = "http://127.0.0.1:1"\n[[routes]]\npattern = "gpt-("\nprovider = "up"\n',
                  r"routes\[0\]\.pattern: invalid regular expression 'gpt-\(': missing \)"),
    "unknown provider": ('[[routes]]\npattern = "^x"\nprovider = "nowhere"\n',
                         r"routes\[0\]\.provider: unknown provider 'nowhere' \(known: higgs\)"),
    "reserved name": ('[provider.higgs]\nurl = "http://127.0.0.1:1"\n',
                      r"provider\.higgs: the name 'higgs' is reserved for the local provider"),
    "port range": ("[server]\nport = 70000\n", r"server\.port: Input should be less than or equal to 65535"),
    "negative port": ("[server]\nport = -1\n", r"server\.port: Input should be greater than or equal to 1"),
    "duplicate route names": (
        '[[routes]]\nname = "a"\npattern = "^x"\nprovider = "higgs"\n'
        '[[routes]]\nname = "a"\npattern = "^y"\nprovider = "higgs"\n',
        r"routes\[1\]\.name: duplicate route name 'a' \(also routes\[0\]\)"),
    "description without name": ('[[routes]]\npattern = "^x"\nprovider = "higgs"\ndescription = "why"\n',
                                 r"routes\[0\]\.description: a description needs a name"),
    "route without pattern": ('[[routes]]\nprovider = "higgs"\n', r"routes\[0\]\.pattern: missing"),
    "unknown default": ('[default]\nprovider = "gone"\n', r"default\.provider: unknown provider 'gone'"),
    "wrong type": ('[server]\ntimeout = "soon"\n', r"server\.timeout: Input should be a valid number"),
    "model without path": ('[[models]]\nname = "x"\n', r"models\[0\]\.path: missing required key"),
    "invalid toml": ("[server\nport = 1\n", r"invalid TOML: .*line 1"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_validation_errors_name_file_key_and_problem(_isolated_config, case):
    text, pattern = CASES[case]
    path = write(_isolated_config / "config.toml", text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_settings()
    assert str(path) in str(info.value)


def test_all_problems_are_reported_at_once(_isolated_config):
    write(_isolated_config / "config.toml", '[[routes]]\npattern = "("\nprovider = "x"\n[default]\nprovider = "y"\n')
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "routes[0].pattern" in message and "routes[0].provider" in message and "default.provider" in message


def test_unknown_keys_are_warnings(_isolated_config):
    write(_isolated_config / "config.toml", '[server]\nprot = 1\n[provider.up]\nurl = "http://x"\nextra_knob = 1\n'
                                           '[plugins.acme]\nanything = true\n[mystery]\nx = 1\n')
    loaded = load_settings()
    assert any("unknown key 'server.prot'" in w for w in loaded.warnings)
    assert any("unknown key 'mystery'" in w for w in loaded.warnings)
    assert not any("extra_knob" in w or "acme" in w for w in loaded.warnings)  # plugins validate their own
    assert loaded.settings.plugin_section("acme") == {"anything": True}


def test_server_keys_a_provider_reads_are_not_unknown(_isolated_config):
    """``[server] max_batch`` is the local engine's knob (``ProviderSpec.server_keys``): serve and doctor
    drop that warning once the plugin is loaded, and keep the one about a typo."""
    write(_isolated_config / "config.toml", '[server]\nmax_batch = 8\nmax_btach = 8\n')
    loaded = load_settings()
    assert len(loaded.warnings) == 2
    left = loaded.warnings_except(["server.max_batch"])
    assert len(left) == 1 and "unknown key 'server.max_btach'" in left[0]


def test_unknown_format_and_kind_need_the_registry(_isolated_config):
    write(_isolated_config / "config.toml", '[provider.up]\nurl = "http://x"\nformat = "grpc"\nkind = "nope"\n')
    settings = load_settings().settings
    problems = registry_problems(settings, {"openai", "anthropic"}, {"openai"})
    assert any("provider.up.format: unknown format 'grpc' (known: anthropic, openai)" in p for p in problems)
    assert any("provider.up.kind: unknown provider kind 'nope'" in p for p in problems)


def test_secrets_are_redacted(_isolated_config):
    write(_isolated_config / "config.toml", '[server]\napi_key = "s3cret"\n[provider.up]\nurl = "http://x"\n'
                                           'api_key = "sk-upstream"\n')
    settings = load_settings().settings
    text = repr(settings) + str(settings.model_dump(mode="json"))
    assert "s3cret" not in text and "sk-upstream" not in text and "**********" in text


def test_plugin_flags_merge_with_config(_isolated_config):
    write(_isolated_config / "config.toml", '[plugins]\nenabled = ["a"]\ndisabled = ["b", "c"]\n')
    plugins = load_settings(enable_plugins=["c"], disable_plugins=["a"]).settings.plugins
    assert plugins.enabled == ["c"] and plugins.disabled == ["b", "a"]
