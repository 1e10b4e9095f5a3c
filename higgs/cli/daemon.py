"""``higgs start`` / ``stop`` / ``status``: a background server per profile.

``start`` launches ``higgs serve`` detached (new session, output to the profile's log file), writes the pid
file, and waits until the server reports where it listens and ``/health`` answers. The server writes the
state file itself once listening (``higgs.runtime.record_listening``), so the launcher never guesses a
port. See ``higgs.runtime`` for the file layout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from higgs.runtime import (
    STATE_ENV,
    Instance,
    RuntimePaths,
    base_url,
    check_profile,
    list_instances,
    read_instance,
    read_state,
    terminate,
    write_atomic,
)

DEFAULT_WAIT = 120.0
DEFAULT_STOP_TIMEOUT = 15.0
#: A server log larger than this is moved to ``higgs[.NAME].log.1`` when the next server starts.
LOG_ROLL_BYTES = 20 * 1024 * 1024


class DaemonError(Exception):
    """A start/stop that cannot proceed; the message is for the operator."""


# --------------------------------------------------------------------------------------------------
# HTTP probes (synchronous: the CLI has no event loop of its own)
# --------------------------------------------------------------------------------------------------


def http_json(url: str, *, api_key: str | None = None, timeout: float = 2.0) -> tuple[int, Any]:
    """GET ``url`` and decode JSON. Returns ``(status, body)``; ``(0, error text)`` when unreachable."""
    import urllib.error
    import urllib.request

    headers = {"accept": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
        headers["x-api-key"] = api_key
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read() or b"null")
        except ValueError:
            return err.code, None
    except (OSError, ValueError) as err:
        return 0, str(getattr(err, "reason", err))


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url``/health answers 200."""
    status, _ = http_json(f"{url}/health", timeout=timeout)
    return status == 200


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound right now."""
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int, *, exclude: str | None = "\0") -> Instance | None:
    """The running higgs instance (any profile but ``exclude``) that listens on ``port``."""
    for instance in list_instances():
        if instance.port == port and (exclude == "\0" or instance.profile != exclude):
            return instance
    return None


def profile_label(profile: str | None) -> str:
    return profile or "default"


def api_key_for(profile: str | None, config: str | None = None) -> str | None:
    """The server API key of a profile's config (or ``HIGGS_API_KEY``), for probing protected endpoints."""
    try:
        profile = check_profile(profile)
        from higgs.settings_loader import load_settings

        settings = load_settings(config=config, profile=None if config else profile).settings
    except Exception:
        return os.environ.get("HIGGS_API_KEY") or None
    key = settings.server.api_key
    return key.get_secret_value() if key else None


# --------------------------------------------------------------------------------------------------
# start
# --------------------------------------------------------------------------------------------------


def serve_command(profile: str | None, serve_args: Sequence[str]) -> list[str]:
    """The argv of the background server: this interpreter running ``higgs serve``."""
    bootstrap = "import sys; from higgs.cli import main; sys.argv[0] = 'higgs'; sys.exit(main())"
    argv = [sys.executable, "-c", bootstrap, "serve"]
    if profile:
        argv += ["--profile", profile]
    return argv + list(serve_args)


def expected_address(profile: str | None, host: str | None, port: int | None,
                     config: str | None) -> tuple[str, int] | None:
    """Where the server will listen, from flags or the profile's config; None when the config cannot load
    (the server itself will then report the problem)."""
    if host is not None and port is not None:
        return host, port
    profile = check_profile(profile)
    try:
        from higgs.settings_loader import load_settings

        settings = load_settings(config=config, profile=None if config else profile).settings
    except Exception:
        return None
    return host or settings.server.host, port or settings.server.port


def start_daemon(
    profile: str | None = None,
    serve_args: Sequence[str] = (),
    *,
    host: str | None = None,
    port: int | None = None,
    config: str | None = None,
    wait: float = DEFAULT_WAIT,
) -> Instance:
    """Start a detached server for ``profile`` and wait until it answers ``/health``.

    Raises:
        DaemonError: already running, port taken, the server exited, or it did not answer in time.
    """
    profile = check_profile(profile)  # "default" is the default profile: no --profile for the server
    paths = RuntimePaths.for_profile(profile)
    paths.ensure_dirs()
    running = read_instance(paths)  # also cleans a stale pid file
    if running is not None:
        where = f" at {running.url}" if running.url else ""
        raise DaemonError(f"higgs (profile {paths.label}) is already running{where} (pid {running.pid}); "
                          f"stop it with `higgs stop{_flag(profile)}`")
    address = expected_address(profile, host, port, config)
    if address is not None:
        _check_port(profile, *address)

    _reserve(paths, wait)
    args = list(serve_args)
    if host is not None:
        args += ["--host", host]
    if port is not None:
        args += ["--port", str(port)]
    if config is not None:
        args += ["--config", config]
    env = {**os.environ, STATE_ENV: str(paths.state), "PYTHONUNBUFFERED": "1"}
    paths.state.unlink(missing_ok=True)
    _roll_log(paths.log)
    try:
        with open(paths.log, "ab") as log, open(os.devnull, "rb") as devnull:
            log.write(f"\n--- higgs start {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
            log.flush()
            proc = subprocess.Popen(
                serve_command(profile, args), stdin=devnull, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, close_fds=True,
            )
    except OSError:
        paths.pid.unlink(missing_ok=True)
        raise
    write_atomic(paths.pid, f"{proc.pid}\n")
    try:
        return _wait_ready(proc, paths, address, wait)
    except DaemonError:
        if proc.poll() is not None:
            paths.remove()
        raise


def _roll_log(path: Path) -> None:
    """Keep the server log bounded across restarts: past ``LOG_ROLL_BYTES`` it moves to ``.1``."""
    try:
        if path.stat().st_size > LOG_ROLL_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    except OSError:
        pass


def _reserve(paths: RuntimePaths, wait: float) -> None:
    """Create the pid file exclusively, so two ``higgs start`` of one profile cannot both spawn a server.

    An empty pid file is a start in progress; one older than the start timeout was left by a crashed
    launcher and is taken over.
    """
    try:
        if paths.pid.exists() and paths.pid.read_text().strip() == "" and \
                time.time() - paths.pid.stat().st_mtime > wait + 10:
            paths.pid.unlink(missing_ok=True)
        with open(paths.pid, "x"):
            pass
    except FileExistsError as err:
        raise DaemonError(f"another `higgs start` is starting profile {paths.label} right now ({paths.pid})") from err


def _check_port(profile: str | None, host: str, port: int) -> None:
    owner = port_owner(port, exclude=profile)
    if owner is not None:
        raise DaemonError(f"port {port} is already used by higgs profile '{profile_label(owner.profile)}' "
                          f"(pid {owner.pid}); give this profile another [server] port or use --port")
    if not port_free(host, port):
        raise DaemonError(f"port {port} on {host} is in use by another program; choose another with --port "
                          "or [server] port")


def _wait_ready(proc: subprocess.Popen[bytes], paths: RuntimePaths, address: tuple[str, int] | None,
                wait: float) -> Instance:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise DaemonError(f"the server exited with status {code} before answering; last lines of "
                              f"{paths.log}:\n{log_tail(paths.log)}")
        state = read_state(paths.state)
        if state.get("pid") == proc.pid and state.get("port"):
            url = base_url(state["host"], int(state["port"]))
            if healthy(url, timeout=1.0):
                return Instance(profile=paths.profile, pid=proc.pid, host=state["host"], port=int(state["port"]),
                                started=state.get("started"), config=state.get("config"), log=str(paths.log))
        elif address is not None and not state:
            # A server without the metrics plugin never writes its state: confirm by pid through /v1/system.
            url = base_url(*address)
            status, body = http_json(f"{url}/v1/system", api_key=api_key_for(paths.profile), timeout=1.0)
            if status == 200 and isinstance(body, dict) and body.get("pid") == proc.pid:
                instance = Instance(profile=paths.profile, pid=proc.pid, host=address[0], port=address[1],
                                    started=time.time(), log=str(paths.log))
                write_atomic(paths.state, json.dumps({k: v for k, v in instance.as_dict().items()
                                                      if k in ("pid", "host", "port", "started")}) + "\n")
                return instance
        time.sleep(0.1)
    raise DaemonError(f"the server (pid {proc.pid}) did not answer /health within {wait:.0f} s; it keeps "
                      f"starting in the background: see {paths.log}, `higgs status`, `higgs stop"
                      f"{_flag(paths.profile)}`")


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file (indented), or a note when it is empty."""
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
    except OSError:
        return "    (no log)"
    return "\n".join(f"    {line}" for line in text) or "    (empty log)"


def _flag(profile: str | None) -> str:
    return f" --profile {profile}" if profile else ""


# --------------------------------------------------------------------------------------------------
# stop / status
# --------------------------------------------------------------------------------------------------


def stop_daemon(profile: str | None = None, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> tuple[Instance, str]:
    """Stop the profile's instance (SIGTERM, SIGKILL after ``timeout``) and remove its runtime files.

    Returns:
        The instance and how it ended (``terminated``, ``killed`` or ``gone``).

    Raises:
        DaemonError: no instance of that profile is running.
    """
    paths = RuntimePaths.for_profile(profile)
    instance = read_instance(paths)
    if instance is None:
        raise DaemonError(f"no higgs instance of profile {paths.label} is running")
    outcome = terminate(instance.pid, timeout=timeout)
    paths.remove()
    return instance, outcome


def describe(instance: Instance, *, timeout: float = 2.0) -> dict[str, Any]:
    """An instance plus what its ``/v1/system`` and ``/v1/models`` say (``reachable`` False if silent)."""
    info = instance.as_dict()
    info.update(reachable=False, uptime_s=None, models=[], version=None)
    if instance.url is None:
        return info
    key = api_key_for(instance.profile, instance.config)
    status, system = http_json(f"{instance.url}/v1/system", api_key=key, timeout=timeout)
    if status == 200 and isinstance(system, dict):
        info.update(reachable=True, uptime_s=system.get("uptime_s"), version=system.get("version"),
                    memory=system.get("memory"))
    elif status:
        info["error"] = f"/v1/system answered HTTP {status}"
    else:
        info["error"] = f"not answering: {system}"
    status, models = http_json(f"{instance.url}/v1/models", api_key=key, timeout=timeout)
    if status == 200 and isinstance(models, dict):
        info["models"] = [m.get("id") for m in models.get("data", []) if isinstance(m, dict)]
    if info["uptime_s"] is None and instance.started:
        info["uptime_s"] = round(time.time() - instance.started, 3)
    return info


def format_uptime(seconds: float | None) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``."""
    if seconds is None:
        return "-"
    s = int(seconds)
    days, rem = divmod(s, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def status_table(rows: Sequence[dict[str, Any]]) -> str:
    """The ``higgs status`` table."""
    if not rows:
        return "no higgs instance is running"
    header = ("PROFILE", "PID", "URL", "UPTIME", "STATE", "MODELS")
    lines = [header]
    for row in rows:
        models = ", ".join(row["models"]) if row["models"] else "-"
        state = "running" if row["reachable"] else "starting" if row["url"] is None else "not answering"
        lines.append((row["profile"], str(row["pid"]), row["url"] or "-", format_uptime(row["uptime_s"]), state,
                      models))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in lines
    )


# --------------------------------------------------------------------------------------------------
# CLI commands
# --------------------------------------------------------------------------------------------------


def start(
    *serve_args: str,
    profile: str | None = None,
    host: str | None = None,
    port: int | None = None,
    config: str | None = None,
    wait: float = DEFAULT_WAIT,
) -> int:
    """Start higgs in the background for a profile and wait until it answers.

    Arguments after ``--`` go to ``higgs serve`` (e.g. ``higgs start -- --no-plugin mlx --model ID``).

    Args:
        serve_args: extra ``higgs serve`` arguments.
        profile: profile name (``config.NAME.toml``); default profile when omitted.
        host: bind address (overrides the config).
        port: port (overrides the config).
        config: a config file instead of a profile.
        wait: seconds to wait for ``/health``.
    """
    try:
        instance = start_daemon(profile, serve_args, host=host, port=port, config=config, wait=wait)
    except (DaemonError, ValueError) as err:
        print(f"higgs start: {err}", file=sys.stderr)
        return 1
    print(f"higgs (profile {profile_label(profile)}) is listening on {instance.url} (pid {instance.pid})")
    print(f"log: {instance.log}")
    return 0


def stop(
    *,
    profile: str | None = None,
    all_profiles: Annotated[bool, Parameter(name="--all", negative="")] = False,
    timeout: float = DEFAULT_STOP_TIMEOUT,
) -> int:
    """Stop the background server of a profile (SIGTERM, then SIGKILL after ``timeout`` seconds).

    Args:
        profile: profile name; default profile when omitted.
        all_profiles: stop every running profile.
        timeout: seconds to wait after SIGTERM before SIGKILL.
    """
    profiles = [i.profile for i in list_instances()] if all_profiles else [profile]
    if all_profiles and not profiles:
        print("no higgs instance is running")
        return 0
    code = 0
    for name in profiles:
        try:
            instance, outcome = stop_daemon(name, timeout=timeout)
        except (DaemonError, ValueError) as err:
            print(f"higgs stop: {err}", file=sys.stderr)
            code = 1
            continue
        how = {"terminated": "stopped", "killed": "killed (did not stop within the timeout)",
               "gone": "was already gone"}[outcome]
        print(f"higgs (profile {profile_label(name)}, pid {instance.pid}) {how}")
    return code


def status(*, json_output: Annotated[bool, Parameter(name="--json", negative="")] = False) -> int:
    """Show every profile's background server: pid, URL, uptime, models.

    Args:
        json_output: print JSON instead of a table.
    """
    rows = [describe(instance) for instance in list_instances()]
    if json_output:
        print(json.dumps(rows, indent=2))
    else:
        print(status_table(rows))
    return 0
