"""``higgs attach`` finds its server: --url, the profile's instance, else the profile's configured address."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from higgs_tui.cli import resolve_target

from higgs.runtime import RuntimePaths


def test_resolve_target(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("HIGGS_API_KEY", raising=False)
    monkeypatch.delenv("HIGGS_PORT", raising=False)
    home = tmp_path / "higgs"
    home.mkdir()
    (home / "config.work.toml").write_text('[server]\nport = 9123\napi_key = "sekret"\n')
    assert resolve_target("work", None) == ("http://127.0.0.1:9123", "sekret")
    assert resolve_target("work", "http://h:1/") == ("http://h:1", "sekret")

    # A process that looks like a higgs server stands in for the profile's running instance.
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)  # higgs serve"])
    try:
        paths = RuntimePaths.for_profile("work")
        paths.ensure_dirs()
        paths.pid.write_text(f"{stand_in.pid}\n")
        paths.state.write_text(json.dumps({"pid": stand_in.pid, "host": "127.0.0.1", "port": 9555,
                                           "started": time.time()}))
        assert resolve_target("work", None) == ("http://127.0.0.1:9555", "sekret")
    finally:
        stand_in.kill()
        stand_in.wait()
