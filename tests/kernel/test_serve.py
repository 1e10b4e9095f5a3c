"""``higgs serve`` as a real process: config + flags, the example third-party plugin serving requests,
IPv6, the exposure warning, fatal errors for explicitly enabled broken plugins, graceful SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

CONFIG = """
[plugins]
disabled = ["*"]
enabled = ["openai-format", "anthropic-format", "routing", "example"]

[provider.echo]
kind = "example"
models = ["echo-1"]

[default]
provider = "echo"
"""


def free_port(family=socket.AF_INET, host="127.0.0.1") -> int:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    return subprocess.Popen([sys.executable, "-m", "higgs", "serve", "--config", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_listening(proc: subprocess.Popen, timeout: float = 60, seen: list[str] | None = None) -> str:
    """Read stderr until the 'listening on URL' line; return the URL (lines read go to ``seen``)."""
    deadline = time.monotonic() + timeout
    lines = seen if seen is not None else []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "higgs listening on " in line:
            return line.split("higgs listening on ", 1)[1].split()[0]
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines) + proc.stderr.read())


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def test_serve_with_example_plugin_and_graceful_sigterm(tmp_path):
    port = free_port()
    proc = start(tmp_path, "--port", str(port), "--api-key", "k")
    url = wait_listening(proc)
    assert url == f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    reply = client.chat.completions.with_raw_response.create(
        model="echo-1", messages=[{"role": "user", "content": "stressed"}])
    assert reply.parse().choices[0].message.content == "desserts"
    assert reply.headers["x-higgs-provider"] == "echo" and reply.headers["x-higgs-route"] == "default"
    assert [m.id for m in client.models.list()] == ["echo-1"]
    client.close()
    code, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in err


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 support")
def test_serve_on_ipv6_loopback(tmp_path):
    try:
        port = free_port(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("::1 cannot be bound here")
    proc = start(tmp_path, "--host", "::1", "--port", str(port))
    url = wait_listening(proc)
    assert url == f"http://[::1]:{port}"
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        reply = client.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "abc"}])
    assert reply.choices[0].message.content == "cba"
    assert stop(proc, signal.SIGINT)[0] == 0


def test_non_loopback_without_key_warns_loudly(tmp_path):
    proc = start(tmp_path, "--host", "0.0.0.0", "--port", str(free_port()))
    seen: list[str] = []
    wait_listening(proc, seen=seen)
    stop(proc)
    assert "WARNING: listening on 0.0.0.0 without an API key" in "".join(seen)


def test_enabled_plugin_that_is_missing_is_fatal(tmp_path):
    proc = start(tmp_path, "--plugin", "no-such-plugin", "--port", str(free_port()))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "plugin 'no-such-plugin' was enabled but failed to load" in err


def test_invalid_flag_value_is_a_config_error(tmp_path):
    proc = start(tmp_path, "--port", "0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--port: server.port" in err


async def test_graceful_shutdown_lets_short_requests_finish_and_cancels_long_ones():
    import asyncio

    import aiohttp

    from higgs.server.runner import serve_app
    from higgs.testing import FakeProvider, build_app

    short = FakeProvider(local=True, models=["tiny"], delay=0.3)
    app = build_app(providers={"higgs": short})
    stop = asyncio.Event()
    urls: list[str] = []
    port = free_port()
    server = asyncio.create_task(serve_app(app, "127.0.0.1", port, grace=1.0, ready=urls.append, stop=stop))
    while not urls:
        await asyncio.sleep(0.01)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        request = asyncio.create_task(http.post(urls[0] + "/v1/chat/completions", json=body))
        await asyncio.sleep(0.1)  # in flight
        stop.set()
        resp = await request
        assert resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"]
    await asyncio.wait_for(server, 10)

    slow = FakeProvider(local=True, models=["tiny"], delay=30)
    stop, urls = asyncio.Event(), []
    server = asyncio.create_task(serve_app(build_app(providers={"higgs": slow}), "127.0.0.1", free_port(),
                                           grace=0.5, ready=urls.append, stop=stop))
    while not urls:
        await asyncio.sleep(0.01)
    async with aiohttp.ClientSession() as http:
        request = asyncio.create_task(http.post(urls[0] + "/v1/chat/completions", json=body))
        await asyncio.sleep(0.1)
        started = asyncio.get_running_loop().time()
        stop.set()
        await asyncio.wait_for(server, 10)
        assert asyncio.get_running_loop().time() - started < 5
        assert slow.cancelled == 1
        request.cancel()


def test_the_starter_config_starts_as_written(tmp_path):
    from higgs.cli.init import STARTER_CONFIG

    config = tmp_path / "starter.toml"
    config.write_text(STARTER_CONFIG.replace("port = 8000", f"port = {free_port()}"))
    # The local engine (higgs-mlx) is left out only to keep this test fast; everything else is as written.
    proc = subprocess.Popen([sys.executable, "-m", "higgs", "serve", "--config", str(config), "--no-plugin", "mlx"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    url = wait_listening(proc, seen=seen)
    import urllib.request

    with urllib.request.urlopen(url + "/health", timeout=10) as resp:
        assert resp.status == 200
    code, err = stop(proc)
    assert code == 0 and "unknown key" not in "".join(seen) + err
    assert "WARNING: listening" not in "".join(seen)  # loopback by default


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start(tmp_path, "--port", str(port))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in err
