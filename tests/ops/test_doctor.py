"""``higgs doctor``: each kind of failure on its own, then a clean bill of health, in-process and via the CLI."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from aiohttp import web
from ops_support import run_higgs

from higgs.cli.doctor import Report, run_checks
from higgs.testing import serve_in_thread

for _needed in ("higgs_openai", "higgs_anthropic", "higgs_arch_llama"):  # enabled below
    pytest.importorskip(_needed)

# A fixed plugin set, so the outcome does not depend on whatever else is installed.
PLUGINS = """
[plugins]
disabled = ["*"]
enabled = ["openai-format", "anthropic-format", "routing", "metrics", "openai", "anthropic", "arch-llama"]
"""


def write_config(env: dict[str, str], text: str, profile: str | None = None) -> Path:
    name = f"config.{profile}.toml" if profile else "config.toml"
    path = Path(env["XDG_CONFIG_HOME"]) / "higgs" / name
    path.write_text(text)
    return path


def checks(report: Report, area: str) -> dict[str, tuple[str, str]]:
    return {c.name: (c.status, c.message) for c in report.checks if c.area == area}


def model_dir(root: Path, model_type: str | None = "llama", weights: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if model_type is not None:
        (root / "config.json").write_text(json.dumps({"model_type": model_type}))
    if weights:
        (root / "model.safetensors").write_bytes(b"\0" * 16)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_invalid_config_fails(isolated):
    write_config(isolated, "[server]\nport = 99999\n")
    report = run_checks()
    assert not report.ok
    status, message = checks(report, "config")["file"]
    assert status == "fail" and "server.port" in message and "config.toml" in message


def test_toml_syntax_error_and_missing_profile_fail(isolated):
    write_config(isolated, "[server\nport = 1\n")
    assert checks(run_checks(), "config")["file"][0] == "fail"
    report = run_checks(profile="nowhere")
    assert checks(report, "config")["file"][0] == "fail"
    assert "profile 'nowhere' not found" in checks(report, "config")["file"][1]


def test_plugin_load_error_is_listed(isolated):
    write_config(isolated, PLUGINS.replace('"arch-llama"]', '"arch-llama", "no-such-plugin"]'))
    report = run_checks()
    status, message = checks(report, "plugins")["no-such-plugin"]
    assert status == "fail" and "not installed" in message and "required" in message
    assert not report.ok


def test_models_paths_cache_and_architectures(isolated, tmp_path):
    good = model_dir(tmp_path / "good")
    unknown = model_dir(tmp_path / "alien", model_type="alien-net")
    bare = model_dir(tmp_path / "bare", model_type=None)
    cache = Path(isolated["HF_HUB_CACHE"])
    model_dir(cache / "models--org--cached" / "snapshots" / "abc123")
    write_config(isolated, PLUGINS + f"""
[[models]]
path = "{good}"
name = "good"
[[models]]
path = "{unknown}"
name = "alien"
[[models]]
path = "{bare}"
name = "bare"
[[models]]
path = "{tmp_path / 'missing'}"
name = "missing"
[[models]]
path = "org/cached"
[[models]]
path = "org/not-cached"
""")
    # Without a local provider plugin the models cannot be served at all.
    report = run_checks()
    models = checks(report, "models")
    assert models["local engine"][0] == "fail"
    assert models["good"] == ("ok", f"{good}: model_type 'llama' (architecture llama)")
    assert models["alien"][0] == "fail" and "no architecture plugin serves model_type 'alien-net'" in models["alien"][1]
    assert models["bare"][0] == "fail" and "no config.json" in models["bare"][1]
    assert models["missing"][0] == "fail" and "does not exist" in models["missing"][1]
    assert models["org/cached"][0] == "ok" and "cached at" in models["org/cached"][1]
    assert models["org/not-cached"][0] == "warn" and "not in the Hugging Face cache" in models["org/not-cached"][1]


def upstream_app(key: str) -> web.Application:
    async def models(request: web.Request) -> web.Response:
        if request.headers.get("authorization") != f"Bearer {key}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": "m"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    return app


def test_providers_unreachable_rejected_and_accepted(isolated):
    with serve_in_thread(upstream_app("good-key")) as url:
        write_config(isolated, PLUGINS + f"""
[provider.down]
kind = "openai"
url = "http://127.0.0.1:{free_port()}/v1"
[provider.wrongkey]
kind = "openai"
url = "{url}/v1"
api_key = "bad-key-123"
[provider.nokey]
kind = "openai"
url = "{url}/v1"
[provider.fine]
kind = "openai"
url = "{url}/v1"
api_key = "good-key"
[default]
provider = "fine"
""")
        report = run_checks(probe_timeout=3)
    providers = checks(report, "providers")
    assert providers["down"][0] == "fail" and "unreachable" in providers["down"][1]
    assert providers["wrongkey"][0] == "fail" and "api_key was rejected" in providers["wrongkey"][1]
    assert providers["nokey"][0] == "fail" and "wants an API key" in providers["nokey"][1]
    assert providers["fine"][0] == "ok" and "key accepted" in providers["fine"][1]
    text = report.text()
    assert "bad-key-123" not in text and "good-key" not in text  # keys are never shown


def test_default_provider_without_local_engine_fails(isolated):
    write_config(isolated, PLUGINS)  # [default] provider = "higgs" but no local plugin is enabled
    report = run_checks()
    assert checks(report, "providers")["default"][0] == "fail"


def test_port_in_use_by_another_program_fails(isolated):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        write_config(isolated, PLUGINS + f'[server]\nport = {port}\n[default]\nprovider = "fine"\n'
                     '[provider.fine]\nkind = "openai"\nurl = "http://127.0.0.1:9/v1"\n')
        report = run_checks(probe_timeout=1)
    status, message = checks(report, "server")["port"]
    assert status == "fail" and f"{port} on 127.0.0.1 is in use by another program" in message


def test_clean_config_passes_via_cli(isolated):
    with serve_in_thread(upstream_app("k")) as url:
        write_config(isolated, PLUGINS + f'[server]\nport = {free_port()}\n[default]\nprovider = "up"\n'
                     f'[provider.up]\nkind = "openai"\nurl = "{url}/v1"\napi_key = "k"\n', profile="ok")
        done = run_higgs(isolated, "doctor", "--profile", "ok", "--json")
        text = run_higgs(isolated, "doctor", "--profile", "ok")
    assert done.returncode == 0, done.stdout
    body = json.loads(done.stdout)
    assert body["ok"] is True and body["failures"] == 0
    assert {c["area"] for c in body["checks"]} == {"config", "plugins", "providers", "server"}
    assert text.returncode == 0 and "everything looks fine" in text.stdout
    bad = run_higgs(isolated, "doctor", "--profile", "missing")
    assert bad.returncode == 1 and "FAIL" in bad.stdout and "1 problem found" in bad.stdout
