"""Proxy-path benchmark: added latency and requests/s of higgs vs. a direct call vs. LiteLLM's proxy.

Everything runs on 127.0.0.1 against the same fake OpenAI-compatible upstream (``higgs.remote.fake``), each
server in its own process; the load generator is this process (aiohttp). For each target and mode
(non-streamed and streamed chat completions):

- latency: ``--requests`` sequential requests (concurrency 1) -> p50/p99 of the full response time, and the
  added latency over the direct call at p50/p99;
- throughput: ``--concurrency`` parallel clients for ``--seconds`` -> requests/s.

Usage::

    python bench/proxy.py                                  # higgs + direct; LiteLLM from /tmp/litellm-venv if present
    python bench/proxy.py --litellm /path/to/venv/bin/litellm --requests 500 --seconds 10

LiteLLM is installed in a separate venv (``uv venv /tmp/litellm-venv && uv pip install 'litellm[proxy]'``),
never in the project's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
BODY = {"model": "gpt-bench", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 32}
TEXT = "Hello! This is a short answer from the benchmark upstream, twenty words long, give or take a few."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_higgs(port: int, upstream: str) -> None:
    """Child-process mode: the real gateway app with the OpenAI provider plugin, one provider, default route."""
    import logging

    import higgs_openai
    from aiohttp import web

    from higgs.testing import build_app

    logging.basicConfig(level=logging.WARNING)
    # Like LiteLLM below: clients authenticate with the gateway's key, the provider injects its own.
    config = {"server": {"api_key": "sk-bench"},
              "provider": {"up": {"kind": "openai", "url": upstream + "/v1", "api_key": "sk-upstream"}},
              "default": {"provider": "up"}, "logging": {"level": "WARNING"}}
    app = build_app(config, plugins=[("openai", higgs_openai)],
                    builtins=("openai-format", "anthropic-format", "routing"))
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, handler_cancellation=True)


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    #: Processes whose CPU time serves this target's requests (the proxy itself; the upstream for direct).
    pids: list[int] = field(default_factory=list)


async def wait_ready(url: str, timeout: float, probe: str = "/v1/chat/completions") -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.post(url + probe, json=BODY, headers={"authorization": "Bearer sk-bench"}) as r:
                    await r.read()
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
    raise TimeoutError(f"{url} did not become ready within {timeout}s")


def start(name: str, cmd: list[str], url: str, env: dict[str, str] | None = None) -> Server:
    log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    process = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                               env={**os.environ, **(env or {})})
    return Server(name, url, process, log)


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    first_byte: list[float] = field(default_factory=list)
    cpu_per_request: float = 0.0
    rps: float = 0.0
    errors: int = 0

    def pct(self, q: float, first_byte: bool = False) -> float:
        data = sorted(self.first_byte if first_byte else self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000 if data else float("nan")


ANTHROPIC_BODY = {"model": "gpt-bench", "max_tokens": 32, "messages": [{"role": "user", "content": "Say hello."}]}


async def one(http: aiohttp.ClientSession, url: str, stream: bool, first: list[float] | None = None) -> bool:
    """One request, read to the end; appends the time to the first body byte to ``first``.

    A URL ending in ``#anthropic`` sends an Anthropic Messages request instead (the translated path).
    """
    anthropic = url.endswith("#anthropic")
    base = url.removesuffix("#anthropic")
    body: dict[str, object] = dict(ANTHROPIC_BODY if anthropic else BODY)
    if stream:
        body["stream"] = True
    path = "/v1/messages" if anthropic else "/v1/chat/completions"
    started = time.perf_counter()
    async with http.post(base + path, json=body, headers={"authorization": "Bearer sk-bench"}) as response:
        data = bytearray()
        async for chunk in response.content.iter_any():
            if not data and first is not None:
                first.append(time.perf_counter() - started)
            data += chunk
        if anthropic:
            return response.status == 200 and (b"message_stop" in data if stream else b'"content"' in data)
        return response.status == 200 and (b"[DONE]" in data if stream else b'"choices"' in data)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (Linux ``/proc``; 0 elsewhere)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def measure(url: str, stream: bool, requests: int, concurrency: int, seconds: float,
                  pids: list[int]) -> Result:
    """Sequential latencies (and the servers' CPU per request over them), then concurrent throughput."""
    result = Result()
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(20):  # warm-up: pools, JITs of the servers' code paths
            await one(http, url, stream)
        cpu_before = cpu_seconds(pids)
        for _ in range(requests):
            started = time.perf_counter()
            ok = await one(http, url, stream, result.first_byte)
            result.latencies.append(time.perf_counter() - started)
            result.errors += not ok
        result.cpu_per_request = (cpu_seconds(pids) - cpu_before) / max(requests, 1)
        done = 0
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                ok = await one(http, url, stream)
                done += ok
                result.errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.rps = done / (time.perf_counter() - started)
    return result


def table(results: dict[tuple[str, bool], Result], names: list[str]) -> str:
    rows = [["mode", "target", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "first byte p50 ms",
             "server CPU ms/req", "req/s", "errors"]]
    for stream in (False, True):
        direct = results.get(("direct", stream))
        for name in names:
            r = results.get((name, stream))
            if r is None:
                continue
            added50 = f"{r.pct(0.5) - direct.pct(0.5):.2f}" if direct and name != "direct" else "-"
            added99 = f"{r.pct(0.99) - direct.pct(0.99):.2f}" if direct and name != "direct" else "-"
            rows.append(["stream" if stream else "non-stream", name, f"{r.pct(0.5):.2f}", f"{r.pct(0.99):.2f}",
                         added50, added99, f"{r.pct(0.5, first_byte=True):.2f}", f"{r.cpu_per_request * 1000:.2f}",
                         f"{r.rps:.0f}", str(r.errors)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def litellm_config(upstream: str) -> Path:
    path = Path(tempfile.mkstemp(prefix="bench-litellm-", suffix=".yaml")[1])
    path.write_text(json.dumps({  # JSON is YAML
        "model_list": [{"model_name": "gpt-bench", "litellm_params": {
            "model": "openai/gpt-bench", "api_base": upstream + "/v1", "api_key": "sk-upstream"}}],
        "litellm_settings": {"telemetry": False, "set_verbose": False, "turn_off_message_logging": True},
        # No database, no spend or error logging: LiteLLM's leanest proxy path.
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True},
    }))
    return path


def baseline_tree(ref: str) -> Path:
    """``higgs/`` and the OpenAI provider plugin as of ``ref``, exported (``git archive``) to a temp dir."""
    tree = Path(tempfile.mkdtemp(prefix="bench-higgs-baseline-"))
    archive = subprocess.run(["git", "archive", ref, "higgs", "plugins/higgs-openai"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


async def main() -> int:
    parser = argparse.ArgumentParser(description="higgs proxy-path benchmark")
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per target and mode")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (requests and seconds are split)")
    parser.add_argument("--seconds", type=float, default=6.0, help="throughput window per target and mode")
    parser.add_argument("--litellm", default="/tmp/litellm-venv/bin/litellm", help="LiteLLM CLI ('' = skip)")
    parser.add_argument("--baseline", default="", help="also run higgs as of this git commit (e.g. HEAD~3)")
    args = parser.parse_args()

    servers: list[Server] = []
    try:
        port = free_port()
        upstream = f"http://127.0.0.1:{port}"
        servers.append(start("upstream", [sys.executable, "-m", "higgs.remote.fake", "--port", str(port),
                                          "--words", "1", "--text", TEXT], upstream))
        await wait_ready(upstream, 30)
        targets = [Server("direct", upstream, pids=[servers[0].process.pid] if servers[0].process else [])]
        hport = free_port()
        higgs = start("higgs", [sys.executable, str(Path(__file__).resolve()), "--serve-higgs", str(hport), upstream],
                      f"http://127.0.0.1:{hport}")
        servers.append(higgs)
        targets.append(higgs)
        # The same gateway, Anthropic clients -> OpenAI upstream: the translated path (no peer row).
        higgs.pids = [higgs.process.pid] if higgs.process else []
        targets.append(Server("higgs-translated", higgs.url + "#anthropic", pids=higgs.pids))
        if args.baseline:  # the same gateway at another commit, side by side (before/after a change)
            tree = baseline_tree(args.baseline)
            bport = free_port()
            base = start(f"higgs@{args.baseline}", [sys.executable, str(Path(__file__).resolve()), "--serve-higgs",
                                                    str(bport), upstream], f"http://127.0.0.1:{bport}",
                         env={"PYTHONPATH": f"{tree}{os.pathsep}{tree / 'plugins' / 'higgs-openai'}"})
            base.pids = [base.process.pid] if base.process else []
            servers.append(base)
            targets.append(base)
        if args.litellm and Path(args.litellm).exists():
            lport = free_port()
            lite = start("litellm", [args.litellm, "--config", str(litellm_config(upstream)), "--host", "127.0.0.1",
                                     "--port", str(lport), "--num_workers", "1"], f"http://127.0.0.1:{lport}",
                         env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                              "LITELLM_TELEMETRY": "False", "DISABLE_ADMIN_UI": "True",
                              "LITELLM_MASTER_KEY": "sk-bench"})
            lite.pids = [lite.process.pid] if lite.process else []
            servers.append(lite)
            targets.append(lite)
        else:
            print(f"LiteLLM not found at {args.litellm!r}: skipped", file=sys.stderr)
        for target in targets[1:]:
            if target.process is None:
                continue
            try:
                await wait_ready(target.url, 120)
            except TimeoutError:
                print(f"{target.name} failed to start; log: {target.log}", file=sys.stderr)
                raise
        # Rounds interleave the targets so a burst of load from elsewhere on the machine hits all of them.
        results: dict[tuple[str, bool], Result] = {}
        per_round = max(1, args.requests // args.rounds)
        for round_ in range(args.rounds):
            for stream in (False, True):
                for target in targets:
                    r = await measure(target.url, stream, per_round, args.concurrency, args.seconds / args.rounds,
                                      target.pids)
                    total = results.setdefault((target.name, stream), Result())
                    total.latencies += r.latencies
                    total.first_byte += r.first_byte
                    total.errors += r.errors
                    total.rps += r.rps / args.rounds
                    total.cpu_per_request += r.cpu_per_request / args.rounds
                    print(f"  round {round_ + 1} {target.name:8} {'stream' if stream else 'non-stream':10} "
                          f"p50 {r.pct(0.5):.2f} ms req/s {r.rps:.0f}", file=sys.stderr)
        names = [t.name for t in targets]
        print(f"\nproxy path, {args.requests} sequential requests + {args.concurrency} clients x {args.seconds:.0f}s "
              f"per cell in {args.rounds} interleaved rounds, loopback fake upstream ({os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f})\n")
        print(table(results, names))
        if ("litellm", False) in results:
            for stream in (False, True):
                ratio = results[("higgs", stream)].rps / max(results[("litellm", stream)].rps, 1e-9)
                print(f"higgs/LiteLLM requests/s ({'stream' if stream else 'non-stream'}): {ratio:.1f}x")
        return 0
    finally:
        for server in servers:
            if server.process is not None:
                server.process.terminate()
                try:
                    server.process.wait(10)
                except subprocess.TimeoutExpired:
                    server.process.kill()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-higgs"]:  # child process: run the gateway
        serve_higgs(int(sys.argv[2]), sys.argv[3])
        sys.exit(0)
    sys.exit(asyncio.run(main()))
