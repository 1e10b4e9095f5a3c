"""One test per hook (``test_hook_<name>``), each through the real app; ``test_docs`` checks the list."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai

from higgs import hookimpl
from higgs.cli import app as cli_app
from higgs.cli import main
from higgs.interfaces import FormatRoute, Provider, RouteDecision, RouteQuery, Router, WireFormat
from higgs.messages import ChatRequest, ErrorInfo, Message, ModelInfo, TextBlock
from higgs.specs import ArchitectureSpec, CommandSpec, FormatSpec, ProviderSpec, RouterSpec
from higgs.testing import FakeProvider, app_client, build_app, serve_app


async def test_hook_higgs_providers():
    class Acme(Provider):
        def __init__(self, settings, ctx):
            self.name, self.url = settings.name, settings.url

        async def list_models(self):
            return [ModelInfo(id="acme-1", owned_by=self.name)]

    class Plugin:
        @hookimpl
        def higgs_providers(self):
            return [ProviderSpec(name="acme", factory=Acme, formats=("openai",))]

    app = build_app({"provider": {"acme": {"url": "http://127.0.0.1:1"}}}, plugins=[Plugin()])
    async with serve_app(app) as url:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
            assert [m.id async for m in client.models.list()] == ["acme-1"]


class ShoutFormat(WireFormat):
    """A toy wire format: ``POST /shout`` with ``{"model", "text"}`` -> ``{"shout": TEXT}``."""

    name = "shout"

    def routes(self):
        async def version(request):
            return aiohttp.web.json_response({"shout": "v1"})
        return [FormatRoute("POST", "/shout", operation="chat"), FormatRoute("GET", "/shout/version",
                                                                             handler=version)]

    def claims(self, path):
        return path.startswith("/shout")

    def parse_chat(self, body, headers):
        return ChatRequest(model=body["model"], messages=[Message(role="user", content=[TextBlock(
            text=body["text"])])])

    def render_chat(self, response, request):
        return {"shout": "".join(b.text for b in response.content).upper()}

    def render_error(self, error: ErrorInfo) -> tuple[int, dict[str, Any]]:
        return error.status, {"shout_error": error.message.upper()}

    def parse_upstream_error(self, status, body, headers=None):
        return ErrorInfo(status=status, message=body.decode())


async def test_hook_higgs_formats():
    class Plugin:
        @hookimpl
        def higgs_formats(self):
            return [FormatSpec(name="shout", factory=ShoutFormat)]

    app = build_app(providers={"higgs": FakeProvider(local=True, models=["tiny"], reply="hi")}, plugins=[Plugin()])
    async with app_client(app) as client:
        resp = await client.post("/shout", json={"model": "tiny", "text": "x"})
        assert await resp.json() == {"shout": "HI"}
        assert await (await client.get("/shout/version")).json() == {"shout": "v1"}
        resp = await client.post("/shout/nope", json={})
        assert resp.status == 404 and "NOT FOUND" in (await resp.json())["shout_error"]


async def test_hook_higgs_routers():
    class Everything(Router):
        name = "everything"

        def __init__(self, settings, services):
            self.providers = services.providers

        async def route(self, query: RouteQuery):
            assert "backup" in self.providers
            return RouteDecision(providers=("backup",), model="rewritten", rule="everything", method="custom")

    class Plugin:
        @hookimpl
        def higgs_routers(self):
            return [RouterSpec(name="everything", factory=Everything, order=1)]

    backup = FakeProvider(models=["rewritten"])
    app = build_app(providers={"higgs": FakeProvider(local=True, models=["tiny"]), "backup": backup},
                    plugins=[Plugin()])
    async with app_client(app) as client:
        resp = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": [
            {"role": "user", "content": "x"}]})
        assert resp.headers["x-higgs-provider"] == "backup" and resp.headers["x-higgs-route"] == "everything"
    assert backup.calls[0][1].model == "rewritten"


def test_hook_higgs_architectures():
    seen = {}
    spec = ArchitectureSpec(name="toy", model_types=("toy", "toy2"), module="toy_models.toy",
                            reasoning_tags=("<think>", "</think>"))

    def local_factory(settings, ctx):
        seen.update(ctx.architectures)
        return FakeProvider(local=True)

    class Plugin:
        @hookimpl
        def higgs_architectures(self):
            return [spec]

        @hookimpl
        def higgs_providers(self):
            return [ProviderSpec(name="local", factory=local_factory, local=True)]

    build_app(plugins=[Plugin()])
    assert seen["toy"] is spec and seen["toy2"] is spec


def test_hook_higgs_commands(capsys, monkeypatch):
    import higgs.plugins

    def greet(*, who: str = "you") -> int:
        print(f"greetings, {who}")
        return 0

    class Plugin:
        @hookimpl
        def higgs_commands(self):
            return [CommandSpec(name="greet", target=greet, help="Greet.")]

    real = higgs.plugins.load_plugins
    monkeypatch.setattr(higgs.plugins, "load_plugins",
                        lambda **kw: real(**{**kw, "load_entrypoints": False, "plugins": [Plugin()]}))
    monkeypatch.setattr(cli_app, "_commands", dict(cli_app._commands))  # don't leak the command
    assert main(["greet", "--who", "tests"]) == 0
    assert capsys.readouterr().out == "greetings, tests\n"


async def test_hook_higgs_configure_app():
    class Plugin:
        @hookimpl
        def higgs_configure_app(self, app, settings):
            async def hello(request):
                return aiohttp.web.Response(text=f"port {settings.server.port}")
            app.router.add_get("/hello", hello)

    async with app_client(build_app(plugins=[Plugin()])) as client:
        assert await (await client.get("/hello")).text() == "port 8000"


async def test_hook_higgs_server_started_and_stopping():
    calls = []

    class Plugin:
        @hookimpl
        def higgs_server_started(self, app, settings):
            calls.append(("started", "ok"))

        @hookimpl
        def higgs_server_stopping(self, app, settings):
            calls.append(("stopping", "ok"))

    provider = FakeProvider(local=True)
    async with serve_app(build_app(providers={"higgs": provider}, plugins=[Plugin()])):
        assert calls == [("started", "ok")] and provider.started
    assert calls == [("started", "ok"), ("stopping", "ok")] and provider.closed


test_hook_higgs_server_started = test_hook_higgs_server_started_and_stopping
test_hook_higgs_server_stopping = test_hook_higgs_server_started_and_stopping


async def test_hook_higgs_request_finished():
    records = []

    class Plugin:
        @hookimpl
        def higgs_request_finished(self, record):
            records.append(record)

    class Broken:
        @hookimpl
        def higgs_request_finished(self, record):
            raise RuntimeError("listener bug")  # must not break the request

    app = build_app(providers={"higgs": FakeProvider(local=True, models=["tiny"])}, plugins=[Plugin(), Broken()])
    async with app_client(app) as client:
        resp = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": [
            {"role": "user", "content": "a b c"}]})
        assert resp.status == 200
    (record,) = records
    assert record.model == "tiny" and record.input_tokens == 3 and record.status == 200


def test_hook_higgs_serve_frontend(monkeypatch, capsys):
    import higgs.plugins
    from higgs.formats import anthropic as anthropic_format
    from higgs.formats import openai as openai_format
    from higgs.routing import builtin as routing

    seen = {}

    class Frontend:
        @hookimpl
        def higgs_serve_frontend(self, app, host, port, settings):
            seen.update(host=host, port=port, paths={r.resource.canonical for r in app.router.routes()})
            return 7

    real = higgs.plugins.load_plugins

    def load(plugins=(), **kwargs):
        kwargs["load_entrypoints"] = False
        return real(plugins=[openai_format, anthropic_format, routing, *plugins], **kwargs)

    monkeypatch.setattr(higgs.plugins, "load_plugins", lambda **kw: load(plugins=[Frontend()], **kw))
    assert main(["serve", "--tui", "--port", "8123"]) == 7  # the front end owned the run and its exit code
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123 and "/v1/chat/completions" in seen["paths"]

    monkeypatch.setattr(higgs.plugins, "load_plugins", lambda **kw: load(**kw))  # no front end installed
    assert main(["serve", "--tui", "--port", "8123"]) != 0
    assert "--tui needs a front-end plugin" in capsys.readouterr().err
