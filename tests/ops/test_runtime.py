"""Runtime files: per-profile paths, stale pid detection, termination with a SIGKILL fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from higgs.cli.daemon import DaemonError, _reserve, format_uptime, status_table
from higgs.runtime import (
    RuntimePaths,
    all_profiles,
    base_url,
    check_profile,
    config_dir,
    list_instances,
    pid_alive,
    read_instance,
    record_listening,
    terminate,
)


def test_paths_per_profile_follow_xdg(isolated):
    root = Path(isolated["XDG_CONFIG_HOME"]) / "higgs"
    assert config_dir() == root
    default = RuntimePaths.for_profile(None)
    assert (default.pid, default.state, default.log, default.metrics) == (
        root / "run" / "higgs.pid", root / "run" / "higgs.json", root / "log" / "higgs.log",
        root / "log" / "metrics.jsonl")
    assert RuntimePaths.for_profile("default") == default
    work = RuntimePaths.for_profile("work")
    assert work.pid.name == "higgs.work.pid" and work.log.name == "higgs.work.log"
    assert work.metrics.name == "metrics.work.jsonl" and work.label == "work"


@pytest.mark.parametrize("bad", ["../x", "a/b", "", " x", "-x"])
def test_profile_names_are_checked(bad):
    with pytest.raises(ValueError, match="invalid profile name"):
        check_profile(bad)


def test_base_url_brackets_ipv6_and_maps_wildcards():
    assert base_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert base_url("0.0.0.0", 1) == "http://127.0.0.1:1"
    assert base_url("::", 2) == "http://[::1]:2"
    assert base_url("::1", 3) == "http://[::1]:3"


def test_live_and_stale_instances(isolated):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)  # higgs test"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        work, ghost = RuntimePaths.for_profile("work"), RuntimePaths.for_profile("ghost")
        for paths, proc in ((work, live), (ghost, dead)):
            paths.ensure_dirs()
            paths.pid.write_text(f"{proc.pid}\n")
        os.environ["HIGGS_RUNTIME_STATE"] = str(work.state)
        try:
            record_listening("127.0.0.1", 9999, config="/x.toml")
        finally:
            del os.environ["HIGGS_RUNTIME_STATE"]
        state = json.loads(work.state.read_text())
        state["pid"] = live.pid  # record_listening wrote this process's pid; the instance is `live`
        work.state.write_text(json.dumps(state))
        assert all_profiles() == ["ghost", "work"]
        [instance] = list_instances()
        assert (instance.profile, instance.pid, instance.url) == ("work", live.pid, "http://127.0.0.1:9999")
        assert not ghost.pid.exists()  # the stale one was cleaned
        assert terminate(live.pid, timeout=5) == "terminated"
        live.wait(5)
        assert read_instance(work) is None and not work.pid.exists() and not work.state.exists()
    finally:
        live.kill()


def test_pid_reused_by_another_program_is_stale(isolated):
    other = subprocess.Popen(["sleep", "30"])
    try:
        cmdline = Path(f"/proc/{other.pid}/cmdline")
        for _ in range(200):  # until the child has exec'd (before that it shows no command line, or ours)
            if not cmdline.exists() or b"sleep" in cmdline.read_bytes():
                break
            time.sleep(0.01)
        paths = RuntimePaths.for_profile(None)
        paths.ensure_dirs()
        paths.pid.write_text(f"{other.pid}\n")
        assert read_instance(paths) is None and not paths.pid.exists()
    finally:
        other.kill()
        other.wait()


def test_terminate_falls_back_to_sigkill():
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ok', flush=True)\n"
                                 "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout is not None and stubborn.stdout.readline().strip() == "ok"
    started = time.monotonic()
    assert terminate(stubborn.pid, timeout=0.5) == "killed"
    assert time.monotonic() - started < 5
    stubborn.wait(5)
    assert not pid_alive(stubborn.pid)
    assert terminate(stubborn.pid) == "gone"


def test_concurrent_start_is_refused_and_abandoned_reservation_taken_over(isolated):
    paths = RuntimePaths.for_profile("race")
    paths.ensure_dirs()
    _reserve(paths, wait=60)
    with pytest.raises(DaemonError, match="starting profile race right now"):
        _reserve(paths, wait=60)
    old = time.time() - 600
    os.utime(paths.pid, (old, old))
    _reserve(paths, wait=60)  # a launcher that died long ago does not lock the profile forever
    assert paths.pid.exists()


def test_status_table_and_uptime():
    assert status_table([]) == "no higgs instance is running"
    rows = [{"profile": "default", "pid": 1, "url": "http://127.0.0.1:8000", "uptime_s": 3725, "reachable": True,
             "models": ["a", "b"]},
            {"profile": "w", "pid": 22, "url": None, "uptime_s": None, "reachable": False, "models": []}]
    lines = status_table(rows).splitlines()
    assert lines[0].split() == ["PROFILE", "PID", "URL", "UPTIME", "STATE", "MODELS"]
    assert "1h 2m" in lines[1] and lines[1].endswith("a, b") and "starting" in lines[2]
    assert [format_uptime(s) for s in (5, 65, 90000)] == ["5s", "1m 5s", "1d 1h"]


def test_server_log_rolls_over_on_start(tmp_path):
    from higgs.cli import daemon

    log = tmp_path / "higgs.log"
    log.write_bytes(b"x" * 100)
    daemon._roll_log(log)
    assert log.exists() and not (tmp_path / "higgs.log.1").exists()
    log.write_bytes(b"x" * (daemon.LOG_ROLL_BYTES + 1))
    daemon._roll_log(log)
    assert not log.exists() and (tmp_path / "higgs.log.1").stat().st_size == daemon.LOG_ROLL_BYTES + 1
    daemon._roll_log(tmp_path / "missing.log")  # nothing to roll is fine
