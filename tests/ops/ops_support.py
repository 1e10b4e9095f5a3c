"""Helpers for the operations tests (imported as ``ops_support``; its directory is on ``sys.path`` under
pytest's default import mode): an isolated config directory, the ``higgs`` CLI as a subprocess,
free loopback ports and a fake upstream process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

BOOTSTRAP = "import sys; from higgs.cli import main; sys.argv[0] = 'higgs'; sys.exit(main())"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def clean_env(config_home: Path) -> dict[str, str]:
    """This process's environment minus HIGGS_* variables, with a private config and HF cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIGGS_")}
    env["XDG_CONFIG_HOME"] = str(config_home)
    env["HF_HUB_CACHE"] = str(config_home / "hf-cache")
    return env


def run_higgs(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run the real ``higgs`` CLI."""
    return subprocess.run([sys.executable, "-c", BOOTSTRAP, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


class FakeUpstreamProcess:
    """``python -m higgs.remote.fake`` on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "higgs.remote.fake", "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
