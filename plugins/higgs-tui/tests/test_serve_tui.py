"""``higgs serve --tui``: the server on a thread, the dashboard in front, both stopped by quitting."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request

import pytest
from higgs_tui import cli
from higgs_tui.app import Dashboard

import higgs.metrics
from higgs.server.keys import SETTINGS
from higgs.testing import FakeProvider, build_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_with_dashboard_runs_and_stops(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    seen: dict[str, object] = {}

    def headless_run(self: Dashboard) -> None:
        async def go() -> None:
            async with self.run_test() as pilot:
                await pilot.pause(0.5)
                seen["connected"] = self.connected
                seen["url"] = self.client.url
                with urllib.request.urlopen(f"{self.client.url}/health", timeout=5) as resp:
                    seen["health"] = resp.status
                await pilot.press("q")

        asyncio.run(go())

    monkeypatch.setattr(Dashboard, "run", headless_run)
    app = build_app({}, providers={"higgs": FakeProvider(local=True)}, plugins=[("metrics", higgs.metrics)])
    settings = app[SETTINGS]
    port = free_port()
    assert cli.serve_with_dashboard(app, "127.0.0.1", port, settings) == 0
    assert seen == {"connected": True, "url": f"http://127.0.0.1:{port}", "health": 200}
    with pytest.raises(urllib.error.URLError):  # quitting the dashboard stopped the server
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
