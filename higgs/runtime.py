"""Per-profile runtime files: where a background instance keeps its pid, state, log and metrics log.

Layout, in the config directory (``$XDG_CONFIG_HOME/higgs`` or ``~/.config/higgs``)::

    run/higgs.pid            run/higgs.<profile>.pid      the server's pid (plain number, for `kill`)
    run/higgs.json           run/higgs.<profile>.json     where it listens: pid, host, port, url, started
    log/higgs.log            log/higgs.<profile>.log      its stdout/stderr
    log/metrics.jsonl        log/metrics.<profile>.jsonl  the JSONL request log (``[logging.metrics]``)

A pid file whose process is gone (or is no longer a higgs process: pids get reused) is stale; readers
remove it and report no instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_PROFILE = "default"
_PROFILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Set by ``higgs start`` in the server's environment: the state file the server writes once it listens.
STATE_ENV = "HIGGS_RUNTIME_STATE"


def config_dir() -> Path:
    """The higgs config directory, honouring ``XDG_CONFIG_HOME``."""
    base = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(os.path.expanduser(base)) / "higgs"


def check_profile(profile: str | None) -> str | None:
    """Validate a profile name (it becomes part of file names); ``default`` and None mean the default one."""
    if profile is None or profile == DEFAULT_PROFILE:
        return None
    if not _PROFILE_RE.match(profile):
        raise ValueError(f"invalid profile name {profile!r}: use letters, digits, '.', '_' and '-'")
    return profile


@dataclass(frozen=True)
class RuntimePaths:
    """The runtime files of one profile."""

    profile: str | None
    pid: Path
    state: Path
    log: Path
    metrics: Path

    @classmethod
    def for_profile(cls, profile: str | None = None, base: Path | None = None) -> RuntimePaths:
        """Paths for ``profile`` (None = default) under ``base`` (default: the config directory)."""
        profile = check_profile(profile)
        root = base or config_dir()
        suffix = f".{profile}" if profile else ""
        return cls(
            profile=profile,
            pid=root / "run" / f"higgs{suffix}.pid",
            state=root / "run" / f"higgs{suffix}.json",
            log=root / "log" / f"higgs{suffix}.log",
            metrics=root / "log" / f"metrics{suffix}.jsonl",
        )

    @property
    def label(self) -> str:
        """The profile's display name."""
        return self.profile or DEFAULT_PROFILE

    def ensure_dirs(self) -> None:
        """Create run/ and log/."""
        self.pid.parent.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)

    def remove(self) -> None:
        """Delete the pid and state files (not the logs)."""
        for path in (self.pid, self.state):
            path.unlink(missing_ok=True)


@dataclass
class Instance:
    """A background server as its runtime files describe it."""

    profile: str | None
    pid: int
    host: str | None = None
    port: int | None = None
    started: float | None = None
    config: str | None = None
    log: str | None = None

    @property
    def url(self) -> str | None:
        """Base URL (no ``/v1``), or None while the server has not reported where it listens."""
        if self.host is None or self.port is None:
            return None
        return base_url(self.host, self.port)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {**asdict(self), "profile": self.profile or DEFAULT_PROFILE, "url": self.url}


def base_url(host: str, port: int) -> str:
    """``http://host:port`` with IPv6 brackets; a wildcard bind is reached through loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (zombies count as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        with contextlib.suppress(OSError, IndexError):
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def is_higgs_process(pid: int) -> bool:
    """Whether ``pid`` runs higgs (guards against a reused pid); True when it cannot be told."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        if cmdline.exists():
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        else:  # macOS and other systems without /proc
            text = subprocess.run(
                ["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, timeout=5, check=False
            ).stdout
    except (OSError, subprocess.SubprocessError):
        return True
    return "higgs" in text if text.strip() else pid_alive(pid)


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None when missing or unreadable."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_instance(paths: RuntimePaths, *, clean_stale: bool = True) -> Instance | None:
    """The live instance of a profile, or None; a stale pid file is removed when ``clean_stale``."""
    pid = read_pid(paths.pid)
    if pid is None:
        if clean_stale and paths.state.exists() and not paths.pid.exists():
            paths.state.unlink(missing_ok=True)
        return None
    if not pid_alive(pid) or not is_higgs_process(pid):
        if clean_stale:
            paths.remove()
        return None
    instance = Instance(profile=paths.profile, pid=pid, log=str(paths.log))
    state = read_state(paths.state)
    if state.get("pid") == pid:
        instance.host = state.get("host")
        instance.port = state.get("port")
        instance.started = state.get("started")
        instance.config = state.get("config")
    return instance


def read_state(path: Path) -> dict[str, Any]:
    """The JSON state file, or ``{}``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def all_profiles(base: Path | None = None) -> list[str | None]:
    """Profiles that have a pid file under run/ (None = default), default first."""
    run = (base or config_dir()) / "run"
    found: set[str | None] = set()
    if run.is_dir():
        for path in run.glob("higgs*.pid"):
            middle = path.name[len("higgs") : -len(".pid")]
            if middle == "":
                found.add(None)
            elif middle.startswith(".") and _PROFILE_RE.match(middle[1:]):
                found.add(middle[1:])
    return sorted(found, key=lambda p: (p is not None, p or ""))


def list_instances(base: Path | None = None) -> list[Instance]:
    """Every live instance (stale pid files are cleaned on the way)."""
    out = []
    for profile in all_profiles(base):
        instance = read_instance(RuntimePaths.for_profile(profile, base))
        if instance is not None:
            out.append(instance)
    return out


def record_listening(host: str, port: int, *, config: str | None = None) -> None:
    """Called inside a server started by ``higgs start``: write where it listens to the state file."""
    target = os.environ.get(STATE_ENV)
    if not target:
        return
    state = {
        "pid": os.getpid(),
        "host": host,
        "port": port,
        "started": time.time(),
        "config": config,
        "python": sys.executable,
    }
    write_atomic(Path(target), json.dumps(state, indent=2) + "\n")


def terminate(pid: int, *, timeout: float = 10.0, poll: float = 0.05) -> str:
    """Stop ``pid``: SIGTERM, then SIGKILL if it is still alive after ``timeout`` seconds.

    Returns:
        ``"gone"`` (was not running), ``"terminated"`` or ``"killed"``.
    """
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "gone"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return "terminated"
        time.sleep(poll)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(poll)
    return "killed"
