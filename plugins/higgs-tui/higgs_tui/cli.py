"""``higgs attach``: open the dashboard on a running server, or start one for the session (``--serve``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Annotated, Any

from cyclopts import Parameter


def resolve_target(profile: str | None, url: str | None) -> tuple[str, str | None]:
    """The URL to watch and its API key: ``--url``, else the profile's instance, else its configured address."""
    from higgs.cli.daemon import api_key_for, expected_address
    from higgs.runtime import RuntimePaths, base_url, read_instance

    key = api_key_for(profile)
    if url:
        return url.rstrip("/"), key
    instance = read_instance(RuntimePaths.for_profile(profile))
    if instance is not None and instance.url:
        return instance.url, api_key_for(profile, instance.config)
    address = expected_address(profile, None, None, None)
    return (base_url(*address) if address else "http://127.0.0.1:8000"), key


def attach(
    *serve_args: str,
    profile: Annotated[str | None, Parameter(help="Watch this profile's instance.")] = None,
    url: Annotated[str | None, Parameter(help="Watch the server at this base URL instead.")] = None,
    api_key: Annotated[str | None, Parameter(help="API key, when the server requires one (default: the "
                                                  "profile's [server] api_key or HIGGS_API_KEY).")] = None,
    interval: Annotated[float, Parameter(help="Seconds between refreshes.")] = 1.0,
    serve: Annotated[bool, Parameter(help="Run `higgs serve` (with the arguments after --) for as long as the "
                                          "dashboard is open.")] = False,
) -> int:
    """Open the live dashboard of a running higgs server (q quits; 1-5 switch tabs).

    The dashboard keeps retrying when the server is unreachable and picks up again after a restart.
    """
    from higgs_tui.app import Dashboard

    try:
        target, key = resolve_target(profile, url)
    except ValueError as err:
        print(f"higgs attach: {err}", file=sys.stderr)
        return 2
    server: subprocess.Popen[bytes] | None = None
    if serve:
        server, target = _start_foreground(profile, serve_args)
        if server is None:
            return 1
    try:
        locate = None if (url or serve) else (lambda: resolve_target(profile, None)[0])
        Dashboard(target, api_key=api_key or key, interval=interval, title=f"profile {profile or 'default'}",
                  locate=locate).run()
    finally:
        if server is not None:
            from higgs.runtime import terminate

            terminate(server.pid, timeout=10)
    return 0


def serve_with_dashboard(app: Any, host: str, port: int, settings: Any) -> int:
    """``higgs serve --tui``: serve ``app`` on a background thread and show the dashboard in this one.

    Logging moves to the profile's log file while the dashboard owns the terminal; quitting the dashboard
    stops the server gracefully.
    """
    import asyncio
    import logging
    import threading

    from higgs.runtime import RuntimePaths
    from higgs.server.runner import display_url, serve_app

    paths = RuntimePaths.for_profile(getattr(settings, "profile", None))
    paths.ensure_dirs()
    root = logging.getLogger()
    saved = root.handlers[:]
    file_handler = logging.FileHandler(paths.log)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [file_handler]

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(serve_app(app, host, port, ready=lambda _url: ready.set(), stop=stop))
        except BaseException as err:  # reported on the main thread
            failed.append(err)
            ready.set()

    thread = threading.Thread(target=run, name="higgs-server", daemon=True)
    thread.start()
    try:
        ready.wait()
        if failed:
            print(f"higgs serve --tui: the server could not start: {failed[0]}", file=sys.stderr)
            return 1
        key = settings.server.api_key.get_secret_value() if settings.server.api_key else None
        from higgs_tui.app import Dashboard

        Dashboard(display_url(host, port), api_key=key, title=f"profile {paths.label} · log {paths.log}").run()
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        root.handlers = saved
        file_handler.close()
    return 0


def _start_foreground(profile: str | None, serve_args: tuple[str, ...]) -> tuple[subprocess.Popen[bytes] | None, str]:
    """Start ``higgs serve`` as a child (its output in a temporary log) and wait for it to listen."""
    from pathlib import Path

    from higgs.cli.daemon import healthy, log_tail, serve_command
    from higgs.runtime import STATE_ENV, base_url, read_state

    workdir = Path(tempfile.mkdtemp(prefix="higgs-tui-"))
    state, log_path = workdir / "state.json", workdir / "serve.log"
    env = {**os.environ, STATE_ENV: str(state), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(serve_command(profile, serve_args), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"higgs attach --serve: the server exited with status {proc.returncode}:\n{log_tail(log_path)}",
                  file=sys.stderr)
            return None, ""
        data = read_state(state)
        if data.get("pid") == proc.pid and healthy(url := base_url(data["host"], int(data["port"])), timeout=1):
            print(f"server log: {log_path}", file=sys.stderr)
            return proc, url
        time.sleep(0.1)
    proc.terminate()
    print(f"higgs attach --serve: the server did not answer in time; see {log_path}", file=sys.stderr)
    return None, ""
