"""Running the app: listen, wait for SIGINT/SIGTERM, shut down gracefully within a bound."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from higgs.server.app import notify_started

log = logging.getLogger("higgs.server")

#: Seconds in-flight requests get to finish after a shutdown signal before they are cancelled.
SHUTDOWN_GRACE = 10.0


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def display_url(host: str, port: int) -> str:
    """``http://host:port`` with IPv6 literals bracketed."""
    host = host.strip("[]")
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve_app(app: web.Application, host: str, port: int, *, grace: float = SHUTDOWN_GRACE,
                    ready: Callable[[str], None] | None = None, stop: asyncio.Event | None = None,
                    access_log: bool = False) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT/SIGTERM (or ``stop`` is set).

    ``handler_cancellation`` is on: a client that disconnects cancels the handler and the work behind
    it. On shutdown the listener closes at once and in-flight requests get ``grace`` seconds.
    ``access_log`` logs one line per request to ``aiohttp.access`` (``serve --verbose``).
    """
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=grace,
                           access_log=logging.getLogger("aiohttp.access") if access_log else None)
    await runner.setup()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
    try:
        site = web.TCPSite(runner, host.strip("[]"), port)
        await site.start()
        notify_started(app)
        if ready is not None:
            ready(display_url(host, port))
        await stop.wait()
        log.info("shutting down (in-flight requests get %.0f s)", grace)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
