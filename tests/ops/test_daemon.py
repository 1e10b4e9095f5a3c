"""Real background daemons: two profiles at once on free loopback ports, traffic through the official SDKs,
``/metrics`` in both forms, the TUI attached headless, shellenv/exec, stop, runtime files and log rotation.

The daemons run without the local MLX plugin (``--no-plugin mlx``) and send everything to a fake upstream
process, so they start in about a second. Each profile translates (OpenAI clients -> Anthropic upstream on
alpha, the reverse on beta) so that token counts and TTFT are measured by the gateway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anthropic
import openai
import pytest
from ops_support import BOOTSTRAP, FakeUpstreamProcess, clean_env, free_port, run_higgs

from higgs.runtime import pid_alive

pytestmark = pytest.mark.slow
# The daemons load installed plugins like any `higgs serve`: these tests need the provider plugins and the
# dashboard installed (the all-together session); the kernel-alone session skips them.
for _needed in ("higgs_openai", "higgs_anthropic", "higgs_tui"):
    pytest.importorskip(_needed)


@dataclass
class Fleet:
    env: dict[str, str]
    home: Path
    upstream: FakeUpstreamProcess
    ports: dict[str, int]

    def url(self, profile: str) -> str:
        return f"http://127.0.0.1:{self.ports[profile]}"


def write_profiles(home: Path, upstream: str, ports: dict[str, int], dead_port: int) -> None:
    (home / "config.alpha.toml").write_text(f"""
[server]
port = {ports['alpha']}

[provider.up]
kind = "anthropic"
format = "anthropic"
url = "{upstream}"

[provider.dead]
kind = "openai"
url = "http://127.0.0.1:{dead_port}/v1"

[[routes]]
pattern = "^broken"
provider = "dead"
name = "broken"

[default]
provider = "up"

[retention]
minutes = 1

[logging.metrics]
enabled = true
max_size_mb = 0.002
max_files = 3
""")
    (home / "config.beta.toml").write_text(f"""
[server]
port = {ports['beta']}

[provider.up]
kind = "openai"
url = "{upstream}/v1"

[default]
provider = "up"

[logging.metrics]
enabled = true
""")
    (home / "config.clash.toml").write_text(f"[server]\nport = {ports['alpha']}\n")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    config_home = tmp_path_factory.mktemp("ops") / "config"
    home = config_home / "higgs"
    home.mkdir(parents=True)
    env = clean_env(config_home)
    upstream = FakeUpstreamProcess()
    ports = {"alpha": free_port(), "beta": free_port()}
    write_profiles(home, upstream.url, ports, free_port())
    saved = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "HF_HUB_CACHE")}
    os.environ.update(XDG_CONFIG_HOME=env["XDG_CONFIG_HOME"], HF_HUB_CACHE=env["HF_HUB_CACHE"])
    try:
        for profile in ("alpha", "beta"):
            done = run_higgs(env, "start", "--profile", profile, "--", "--no-plugin", "mlx")
            assert done.returncode == 0, done.stderr
            assert f"listening on http://127.0.0.1:{ports[profile]}" in done.stdout
            assert f"higgs.{profile}.log" in done.stdout
        yield Fleet(env=env, home=home, upstream=upstream, ports=ports)
    finally:
        run_higgs(env, "stop", "--all")
        upstream.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_two_profiles_run_at_once_and_status_lists_them(fleet: Fleet):
    run = fleet.home / "run"
    assert sorted(p.name for p in run.iterdir()) == ["higgs.alpha.json", "higgs.alpha.pid", "higgs.beta.json",
                                                      "higgs.beta.pid"]
    done = run_higgs(fleet.env, "status", "--json")
    assert done.returncode == 0
    rows = {r["profile"]: r for r in json.loads(done.stdout)}
    assert set(rows) == {"alpha", "beta"}
    for name in ("alpha", "beta"):
        row = rows[name]
        assert row["port"] == fleet.ports[name] and row["reachable"] is True
        assert row["pid"] == int((run / f"higgs.{name}.pid").read_text())
        assert row["uptime_s"] > 0 and row["version"]
    assert "claude-fake" in rows["alpha"]["models"]  # read from /v1/models through the fake upstream
    table = run_higgs(fleet.env, "status").stdout
    assert "PROFILE" in table and "alpha" in table and f":{fleet.ports['beta']}" in table


def test_second_instance_and_same_port_are_refused(fleet: Fleet):
    again = run_higgs(fleet.env, "start", "--profile", "alpha", "--", "--no-plugin", "mlx")
    assert again.returncode == 1
    assert "already running" in again.stderr and str(fleet.ports["alpha"]) in again.stderr
    clash = run_higgs(fleet.env, "start", "--profile", "clash", "--", "--no-plugin", "mlx")
    assert clash.returncode == 1
    assert f"port {fleet.ports['alpha']} is already used by higgs profile 'alpha'" in clash.stderr
    assert not (fleet.home / "run" / "higgs.clash.pid").exists()
    doctor = run_higgs(fleet.env, "doctor", "--profile", "clash", "--json")
    assert doctor.returncode == 1
    port = next(c for c in json.loads(doctor.stdout)["checks"] if c["area"] == "server")
    assert port["status"] == "fail" and "used by higgs profile 'alpha'" in port["message"]
    mine = run_higgs(fleet.env, "doctor", "--profile", "beta", "--json")
    checks = {(c["area"], c["name"]): c for c in json.loads(mine.stdout)["checks"]}
    assert checks[("server", "port")]["status"] == "ok"
    assert "held by this profile's instance" in checks[("server", "port")]["message"]
    assert checks[("providers", "up")]["status"] == "ok"  # the fake upstream answers its model list


def test_stale_pid_file_is_detected_and_cleaned(fleet: Fleet):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid_file = fleet.home / "run" / "higgs.ghost.pid"
    pid_file.write_text(f"{dead.pid}\n")
    (fleet.home / "run" / "higgs.ghost.json").write_text(json.dumps({"pid": dead.pid, "port": 1}))
    rows = json.loads(run_higgs(fleet.env, "status", "--json").stdout)
    assert "ghost" not in {r["profile"] for r in rows}
    assert not pid_file.exists() and not (fleet.home / "run" / "higgs.ghost.json").exists()
    stop = run_higgs(fleet.env, "stop", "--profile", "ghost")
    assert stop.returncode == 1 and "no higgs instance of profile ghost" in stop.stderr


async def test_traffic_metrics_json_prometheus_and_tui(fleet: Fleet):
    from higgs_tui.app import Dashboard
    from textual.widgets import DataTable, Static

    oai = openai.AsyncOpenAI(base_url=f"{fleet.url('alpha')}/v1", api_key="sk-test", max_retries=0)
    for i in range(6):
        await oai.chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": f"hi {i}"}])
    stream = await oai.chat.completions.create(model="gpt-fake", stream=True,
                                               messages=[{"role": "user", "content": "stream please"}])
    async for _ in stream:
        pass
    with pytest.raises(openai.APIStatusError):
        await oai.chat.completions.create(model="broken-model", messages=[{"role": "user", "content": "x"}])
    ant = anthropic.AsyncAnthropic(base_url=fleet.url("beta"), api_key="sk-ant-test", max_retries=0)
    for _ in range(3):
        await ant.messages.create(model="claude-fake", max_tokens=50, messages=[{"role": "user", "content": "hey"}])

    async with aiohttp.ClientSession() as http:
        alpha = await (await http.get(f"{fleet.url('alpha')}/metrics")).json()
        beta = await (await http.get(f"{fleet.url('beta')}/metrics")).json()
        prom = await (await http.get(f"{fleet.url('beta')}/metrics/prometheus")).text()

    assert alpha["retention_minutes"] == 1 and list(alpha["windows"]) == ["retention"]
    window = alpha["windows"]["retention"]
    assert window["requests"] >= 8 and window["errors"] == 1
    assert window["output_tokens"] > 0 and window["latency_ms"]["p95"] is not None
    assert window["ttft_ms"]["p50"] is not None  # from the streamed request
    assert alpha["by_route"]["pattern:broken"]["retention"]["errors"] == 1
    assert alpha["by_provider"]["up"]["retention"]["requests"] >= 7
    assert alpha["recent_errors"][0]["model"] == "broken-model"
    assert alpha["engine"]["up"]["local"] is False and "in_flight" in alpha["engine"]["up"]
    assert beta["by_model"]["claude-fake"]["1m"]["requests"] == 3  # (`higgs status` adds /v1/models calls)
    assert beta["by_model"]["claude-fake"]["1m"]["output_tokens"] > 0
    assert 'higgs_requests_total{model="claude-fake",provider="up",route="default",status="200"} 3' in prom
    assert 'higgs_engine_requests{provider="up"} 3' in prom

    # The dashboard, attached headless to the alpha daemon, shows the same live numbers.
    app = Dashboard(fleet.url("alpha"), interval=0.3, title="profile alpha")
    async with app.run_test(size=(130, 40)) as pilot:
        await pilot.pause(0.8)
        assert app.connected, app.last_error
        assert f"{window['requests']} in 1m" in str(app.query_one("#card-rate", Static).render())
        await pilot.press("5")
        table = app.query_one("#errors-table", DataTable)
        assert table.row_count == 1 and str(table.get_row_at(0)[1]) == alpha["recent_errors"][0]["request_id"]
        await pilot.press("4")
        routes = app.query_one("#routing-table", DataTable)
        names = {str(routes.get_row_at(i)[0]) for i in range(routes.row_count)}
        assert {"default", "pattern:broken"} <= names <= {"default", "pattern:broken", "-"}  # "-": /v1/models
        await pilot.press("q")


def test_shellenv_and_exec(fleet: Fleet):
    done = run_higgs(fleet.env, "shellenv", "--profile", "beta", "--shell", "sh")
    assert done.returncode == 0
    assert done.stdout == (f"export ANTHROPIC_BASE_URL={fleet.url('beta')}\n"
                           f"export OPENAI_BASE_URL={fleet.url('beta')}/v1\n")
    fish = run_higgs(fleet.env, "shellenv", "--profile", "beta", "--shell", "fish")
    assert f"set -gx OPENAI_BASE_URL {fleet.url('beta')}/v1;" in fish.stdout
    script = ("import os, sys; print(os.environ['ANTHROPIC_BASE_URL'], os.environ['OPENAI_BASE_URL'], "
              "sys.argv[1:]); sys.exit(7)")
    done = run_higgs(fleet.env, "exec", "--profile", "alpha", "--", sys.executable, "-c", script, "--flag", "x y")
    assert done.returncode == 7
    assert done.stdout.strip() == f"{fleet.url('alpha')} {fleet.url('alpha')}/v1 ['--flag', 'x y']"
    missing = run_higgs(fleet.env, "exec", "--profile", "alpha", "--", "no-such-command-higgs")
    assert missing.returncode == 127 and "command not found" in missing.stderr


def test_exec_forwards_ctrl_c_to_the_command(fleet: Fleet):
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGINT, lambda *a: sys.exit(42))\n"
              "print('ready', flush=True)\n"
              "time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", BOOTSTRAP, "exec", "--profile", "alpha", "--", sys.executable,
                             "-c", script], env=fleet.env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(2)  # what the terminal sends on Ctrl-C
    assert proc.wait(10) == 42


def test_zz_stop_cleans_up_and_logs_rotated(fleet: Fleet):
    """Runs last in this module (name order): stops both daemons."""
    pids = {p: int((fleet.home / "run" / f"higgs.{p}.pid").read_text()) for p in ("alpha", "beta")}
    for profile in ("alpha", "beta"):
        done = run_higgs(fleet.env, "stop", "--profile", profile)
        assert done.returncode == 0, done.stderr
        assert f"pid {pids[profile]}) stopped" in done.stdout
        assert not pid_alive(pids[profile])  # gone (or a zombie waiting for an init that does not reap)
    assert list((fleet.home / "run").iterdir()) == []
    logs = fleet.home / "log"
    assert "listening on" in (logs / "higgs.alpha.log").read_text()
    rotated = sorted(p.name for p in logs.glob("metrics.alpha.jsonl*"))
    assert rotated[0] == "metrics.alpha.jsonl" and "metrics.alpha.jsonl.1" in rotated and len(rotated) <= 3
    for path in logs.glob("metrics.alpha.jsonl*"):
        assert path.stat().st_size <= 0.002 * 1024 * 1024
        for line in path.read_text().splitlines():
            assert json.loads(line)["request_id"]
    beta_lines = [json.loads(x) for x in (logs / "metrics.beta.jsonl").read_text().splitlines()]
    assert sum(1 for r in beta_lines if r["model"] == "claude-fake") == 3
    assert all("sk-ant-test" not in json.dumps(r) for r in beta_lines)  # no credentials in the request log

    unreachable = run_higgs(fleet.env, "shellenv", "--profile", "alpha")
    assert unreachable.returncode == 1 and unreachable.stdout == ""
    assert unreachable.stderr.startswith("# higgs shellenv:") and "not reachable" in unreachable.stderr
    exec_down = run_higgs(fleet.env, "exec", "--profile", "alpha", "--", sys.executable, "-c", "print('ran')")
    assert exec_down.returncode == 1 and "ran" not in exec_down.stdout
    again = run_higgs(fleet.env, "stop", "--profile", "alpha")
    assert again.returncode == 1 and "no higgs instance" in again.stderr
    time.sleep(0)  # nothing left running: the fixture's `stop --all` finds no instance
