"""The dashboard, headless (textual's pilot), against a real gateway app on a loopback port."""

from __future__ import annotations

import socket

import higgs_tui
import openai
from aiohttp import web
from higgs_tui.app import Dashboard, fmt_bytes, fmt_ms
from textual.widgets import DataTable, Sparkline, Static, TabbedContent

import higgs.metrics
from higgs.server.app import notify_started
from higgs.testing import FakeProvider, build_app, serve_app
from higgs.testing.fake import provider_error


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gateway():
    providers = {
        "higgs": FakeProvider(local=True, models=["tiny"], reply="alpha beta gamma delta"),
        "cloud": FakeProvider(models=["gpt-x"], fail=provider_error(503, retryable=False)),
    }
    return build_app({"routes": [{"pattern": "^gpt-", "provider": "cloud", "name": "gpts"}]},
                     providers=providers, plugins=[("metrics", higgs.metrics)])


def text(app: Dashboard, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


def rows(app: Dashboard, selector: str) -> list[list[str]]:
    table = app.query_one(selector, DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def traffic(url: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    for _ in range(4):
        await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    try:
        await client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError:
        pass


async def test_live_numbers_navigation_reconnect_and_quit():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    runner = await start_server(port)
    try:
        await traffic(url)
        app = Dashboard(url, interval=0.2, title="profile test")
        async with app.run_test(size=(130, 40)) as pilot:
            await pilot.pause(0.5)
            assert app.connected
            assert "connected" in text(app, "#status")
            assert "5 in 1m" in text(app, "#card-rate")
            assert "1 errors" in text(app, "#card-errors")
            assert "out 16" in text(app, "#card-tokens")  # four answers of four words
            assert sum(app.query_one("#spark-requests", Sparkline).data) == 5

            await pilot.press("2")
            assert app.query_one(TabbedContent).active == "models"
            models = {r[0]: r for r in rows(app, "#models-table")}
            assert models["tiny"][1] == "4" and models["gpt-x"][7] == "1"
            engine = {r[0]: r for r in rows(app, "#engine-table")}
            assert engine["higgs"][1] == "local" and "calls=4" in engine["higgs"][7]
            assert "(process)" in engine

            await pilot.press("3")
            providers = {r[0]: r for r in rows(app, "#providers-table")}
            assert providers["cloud"][3] == "1" and providers["cloud"][4] == "100.0%"
            assert providers["higgs"][1] == "4"

            await pilot.press("4")
            routes = {r[0]: r for r in rows(app, "#routing-table")}
            assert routes["pattern:gpts"][1] == "1" and routes["local"][1] == "4"
            assert sum(int(r[1]) for r in routes.values()) == 5

            await pilot.press("5")
            errors = rows(app, "#errors-table")
            assert len(errors) == 1 and errors[0][1].startswith("req_") and errors[0][2] == "503"
            await pilot.press("right")
            assert app.query_one(TabbedContent).active == "overview"
            await pilot.press("left")
            assert app.query_one(TabbedContent).active == "errors"

            # The server goes away: the dashboard says so and keeps the last numbers.
            await runner.cleanup()
            await pilot.pause(0.6)
            assert not app.connected
            assert "unreachable" in text(app, "#status")
            assert "showing numbers from" in text(app, "#status")
            assert len(rows(app, "#errors-table")) == 1

            # A fresh server on the same port: the dashboard reconnects and shows the new (empty) numbers.
            runner = await start_server(port)
            await pilot.pause(0.6)
            assert app.connected, app.last_error
            assert "0 in 1m" in text(app, "#card-rate")
            await traffic(url)
            await pilot.press("r")
            await pilot.pause(0.1)
            assert "5 in 1m" in text(app, "#card-rate")
            await pilot.press("q")
        assert app.return_code == 0
    finally:
        await runner.cleanup()


async def start_server(port: int) -> web.AppRunner:
    """A gateway on a fixed loopback port that the test can stop half-way (to simulate a restart)."""
    app = gateway()
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    notify_started(app)
    return runner


async def test_unreachable_from_the_start_and_wrong_key():
    app = Dashboard(f"http://127.0.0.1:{free_port()}", interval=0.2)
    async with app.run_test() as pilot:
        await pilot.pause(0.3)
        assert not app.connected
        assert "cannot connect" in text(app, "#status")
        await pilot.press("q")

    secured = build_app({"server": {"api_key": "k"}}, providers={"higgs": FakeProvider(local=True)},
                        plugins=[("metrics", higgs.metrics)])
    async with serve_app(secured) as url:
        app = Dashboard(url, interval=0.2)
        async with app.run_test() as pilot:
            await pilot.pause(0.3)
            assert "API key" in text(app, "#status")
        app = Dashboard(url, interval=0.2, api_key="k")
        async with app.run_test() as pilot:
            await pilot.pause(0.3)
            assert app.connected


def test_registration_and_formatting():
    specs = higgs_tui.higgs_commands()
    assert [s.name for s in specs] == ["attach"] and specs[0].target == "higgs_tui.cli:attach"
    assert fmt_ms(None) == "-" and fmt_ms(12.4) == "12 ms" and fmt_ms(1500) == "1.50 s"
    assert fmt_bytes(2048) == "2.0 KiB" and fmt_bytes(None) == "-"


async def test_follows_a_profile_restarted_on_another_port():
    first, second = free_port(), free_port()
    where = {"url": f"http://127.0.0.1:{first}"}
    runner = await start_server(first)
    app = Dashboard(where["url"], interval=0.2, title="profile p", locate=lambda: where["url"])
    try:
        async with app.run_test() as pilot:
            await pilot.pause(0.4)
            assert app.connected
            await runner.cleanup()
            runner = await start_server(second)
            where["url"] = f"http://127.0.0.1:{second}"
            await pilot.pause(0.8)
            assert app.connected and app.client.url == where["url"]
            assert app.sub_title == f"profile p · http://127.0.0.1:{second}"
            await pilot.press("q")
    finally:
        await runner.cleanup()
