"""Regenerate ``docs/tui.svg``: a gateway with fake providers, ~20 s of real mixed traffic, then a headless
dashboard screenshot (textual's ``save_screenshot``).

    .venv/bin/python plugins/higgs-tui/scripts/screenshot.py [OUTPUT.svg] [--tab overview]
"""

from __future__ import annotations

import asyncio
import random
import socket
import sys
from pathlib import Path

import openai
from higgs_tui.app import Dashboard

import higgs.metrics
from higgs.testing import FakeProvider, build_app, serve_app
from higgs.testing.fake import provider_error

SECONDS = 20


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def traffic(url: str, seconds: float) -> None:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    rng = random.Random(7)

    async def one(model: str) -> None:
        try:
            stream = await client.chat.completions.create(model=model, stream=True,
                                                          messages=[{"role": "user", "content": "hello " * 20}])
            async for _ in stream:
                pass
        except openai.APIError:
            pass

    while loop.time() < end:
        phase = (end - loop.time()) / seconds
        burst = 1 + int(4 * (1 - abs(phase - 0.5) * 2))
        models = rng.choices(["qwen3-4b", "smollm2", "gpt-4.1", "claude-sonnet"], weights=[5, 3, 2, 2], k=burst)
        await asyncio.gather(*(one(m) for m in models))
        await asyncio.sleep(rng.uniform(0.05, 0.3))


async def main(out: Path, tab: str) -> None:
    reply = "Sure, here is a short answer that streams word by word to the client."
    providers = {
        "higgs": FakeProvider(local=True, models=["qwen3-4b", "smollm2"], reply=reply, delay=0.05, chunk_delay=0.01),
        "openai": FakeProvider(models=["gpt-4.1"], reply=reply, delay=0.2, chunk_delay=0.005),
        "anthropic": FakeProvider(models=["claude-sonnet"], fail=provider_error(529, message="overloaded"),
                                  fail_times=3, delay=0.1),
    }
    settings = {"routes": [{"pattern": "^gpt-", "provider": "openai", "name": "openai"},
                           {"pattern": "^claude-", "provider": "anthropic", "name": "claude"}]}
    app = build_app(settings, providers=providers, plugins=[("metrics", higgs.metrics)])
    port = 8000 if port_free(8000) else 0  # 8000 reads best in the picture
    async with serve_app(app, port=port) as url:
        await traffic(url, SECONDS)
        dash = Dashboard(url, interval=0.5, title="profile default")
        async with dash.run_test(size=(120, 36)) as pilot:
            await pilot.pause(1.0)
            await pilot.press({"overview": "1", "models": "2", "providers": "3", "routing": "4", "errors": "5"}[tab])
            await pilot.pause(0.5)
            dash.save_screenshot(filename=out.name, path=str(out.parent))
    print(f"wrote {out}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    tab = sys.argv[sys.argv.index("--tab") + 1] if "--tab" in sys.argv else "overview"
    if tab in args:
        args.remove(tab)
    asyncio.run(main(Path(args[0] if args else "docs/tui.svg").resolve(), tab))
