"""Continuous batching and the prefix cache: `higgs serve` against `mlx_lm server`, side by side, over HTTP.

Each server runs in its own process on a loopback port, on the same synthetic model (``make_model.py``:
random weights with a real model's shapes and quantization) or ``--model-dir``. Every request is a
streaming chat completion at temperature 0 with ``ignore_eos`` (servers that do not know it may stop at
EOS: tokens are counted from ``usage``). Per server, in one run:

- **levels**: for c in ``--levels``, c requests with unique random prompts sent at once: aggregate decode
  tok/s (completion tokens / wall time), TTFT mean and max, the most requests decoding at the same time;
- **prefix**: TTFT of a unique ``--prefix``-token prompt (cold), the same prompt again (repeat), and a new
  question after the same long system prompt (shared prefix);
- **stall**: ``--stall-streams`` streams decode while a ``--long``-token prompt arrives: the worst gap
  between two chunks of a running stream while that prompt is prefilled, against their median gap;
- **memory**: peak RSS of the server's process tree (sampled every 0.1 s) and the kernel's VmHWM.

Run: ``python bench/batching.py [--preset tiny|llama-3.2-1b-instruct|qwen3-1.7b] [--quick]``; on an H100 with
MLX's CUDA backend: ``python bench/batching.py --preset llama-3.2-1b-instruct`` (set ``MLX_PTX_CACHE_DIR``;
the warm-up compiles kernels). ``--servers higgs,mlx_lm,higgs-nobatch`` picks the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from synthetic import add_model_arguments, build_model  # noqa: E402


class Prompts:
    """Random-word texts of about N tokens, measured with the model's own tokenizer."""

    def __init__(self, model_dir: Path, seed: int) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.rng = random.Random(seed)
        self.syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]

    def text(self, tokens: int) -> str:
        words: list[str] = []
        while True:
            words.extend("".join(self.rng.choice(self.syllables) for _ in range(self.rng.randint(1, 3)))
                         for _ in range(max(8, (tokens - self.count(words)) // 2)))
            if self.count(words) >= tokens:
                break
        while len(words) > 1 and self.count(words[:-1]) >= tokens:
            words = words[: max(1, len(words) - max(1, (self.count(words) - tokens) // 3))]
        return " ".join(words)

    def count(self, words: list[str]) -> int:
        return len(self.tok.encode(" ".join(words)).ids) if words else 0


class Memory(threading.Thread):
    """Samples the RSS of a process tree until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.hwm, self._stop = pid, 0, 0, threading.Event()

    def run(self) -> None:
        while not self._stop.wait(0.1):
            total = 0
            for pid in self._tree():
                try:
                    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                                  if ":" in line)
                    total += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
                    self.hwm = max(self.hwm, int(fields.get("VmHWM", "0 kB").split()[0]) * 1024)
                except (OSError, ValueError):
                    pass
            self.peak = max(self.peak, total)

    def _tree(self) -> list[int]:
        pids, out = [self.pid], []
        while pids:
            pid = pids.pop()
            out.append(pid)
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    children = (task / "children").read_text().split()
                    pids.extend(int(c) for c in children)
            except OSError:
                pass
        return out

    def stop(self) -> None:
        self._stop.set()


async def stream(session: Any, url: str, model: str, messages: list[dict[str, str]], gen: int,
                 ticks: list[float] | None = None) -> dict[str, Any]:
    """One streaming chat request: start/first/end times, chunk times and completion tokens."""
    body = {"model": model, "messages": messages, "max_tokens": gen, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    out: dict[str, Any] = {"start": time.perf_counter(), "first": None, "tokens": 0, "chunks": 0, "cached": 0}
    times = ticks if ticks is not None else []
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {(await response.text())[:300]}")
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            usage = chunk.get("usage")
            if usage:
                out["tokens"] = usage.get("completion_tokens", out["tokens"])
                out["cached"] = ((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                now = time.perf_counter()
                out["first"] = out["first"] or now
                out["chunks"] += 1
                times.append(now)
    out["end"] = time.perf_counter()
    out["first"] = out["first"] or out["end"]
    return out


#: Environment of server variants that differ from another only in it: ``-nocudnn`` prefills with MLX's
#: unfused attention instead of cuDNN's (which MLX's CUDA backend builds a graph for at every new shape).
SERVER_ENV = {"higgs-nocudnn": {"MLX_CUDA_USE_CUDNN_SDPA": "0"}, "mlx_lm-nocudnn": {"MLX_CUDA_USE_CUDNN_SDPA": "0"}}

#: Cumulative counters of the higgs engine's ``/metrics`` whose differences describe one workload.
ENGINE_COUNTERS = ("compiled_traces", "compiled_trace_seconds", "prefill_seconds", "decode_seconds",
                   "first_token_seconds", "first_tokens", "grouped_prefills", "grouped_prompts")


async def engine_counters(session: Any, url: str) -> dict[str, float]:
    """The engine counters of a higgs server, summed over its engines."""
    async with session.get(url + "/metrics") as r:
        engines = (await r.json()).get("engine", {}) if r.status == 200 else {}
    states = [state for state in engines.values() if isinstance(state, dict)]
    return {key: float(sum(state.get(key, 0) for state in states)) for key in ENGINE_COUNTERS}


async def measured(probe: Any, work: Any) -> tuple[Any, dict[str, float] | None]:
    """Await ``work``; with a ``probe`` (higgs servers), also the engine counters' growth meanwhile."""
    before = await probe() if probe else None
    result = await work
    if before is None:
        return result, None
    after = await probe()
    return result, {key: after[key] - before[key] for key in before}


def user(text: str, system: str | None = None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


async def run_server(name: str, command: list[str], port: int, model_dir: Path, args: argparse.Namespace,
                     prompts: Prompts) -> dict[str, Any]:
    import aiohttp

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])),
               **SERVER_ENV.get(name, {}))
    log = open(args.log_dir / f"{name}-{port}.log", "w")
    process = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    memory = Memory(process.pid)
    memory.start()
    url, model = f"http://127.0.0.1:{port}", str(model_dir)
    result: dict[str, Any] = {"levels": {}}
    probe = (lambda: engine_counters(session, url)) if name.startswith("higgs") else None
    deadline = time.monotonic() + args.max_seconds
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.request_timeout)) as session:
            for _ in range(1200):
                try:
                    async with session.get(url + "/v1/models") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode} (see {log.name})")
                await asyncio.sleep(0.5)
            # Warm-up: compile kernels (and trace compiled steps) for every level's batch shapes, so no
            # measured round pays for a shape the server meets for the first time.
            await stream(session, url, model, user(prompts.text(args.prompt)), 8)
            for level in sorted(set(args.levels)):
                await asyncio.gather(*(stream(session, url, model, user(prompts.text(args.prompt)), 8)
                                       for _ in range(level)))
            # ... and for the prefix and long-prompt workloads (other shapes: long prefills, cache hits), so
            # the server measured first does not pay for kernels the later ones find compiled on disk
            short = argparse.Namespace(**{**vars(args), "prefix_reps": 1, "stall_gen": 40})
            if args.prefix_reps > 0:
                await prefix_round(session, url, model, short, prompts)
            if args.long:
                await stall_round(session, url, model, short, prompts)
            profiler = None
            if args.profile:  # sample the server's threads during the measured levels (py-spy on PATH)
                profiler = subprocess.Popen(
                    ["py-spy", "record", "--pid", str(process.pid), "--threads", "--format", "raw", "--rate", "200",
                     "--duration", str(int(args.profile_seconds)), "--nonblocking",
                     "-o", str(args.log_dir / f"{name}-profile.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for level in args.levels:
                rounds = []
                for _ in range(args.rounds):
                    if time.monotonic() > deadline:
                        break
                    outcome, engine = await measured(probe, level_round(session, url, model, args, prompts, level))
                    rounds.append({**outcome, "engine": engine} if engine else outcome)
                if rounds:  # the round with the median throughput
                    result["levels"][level] = sorted(rounds, key=lambda r: r["tok_s"])[len(rounds) // 2]
                    result["levels"][level]["tok_s_all"] = [round(r["tok_s"], 1) for r in rounds]
            if profiler is not None:
                profiler.wait()
            if time.monotonic() < deadline and args.prefix_reps > 0:
                result["prefix"] = await prefix_round(session, url, model, args, prompts, probe)
            if time.monotonic() < deadline and args.long:
                result["stall"] = await stall_round(session, url, model, args, prompts)
            if name.startswith("higgs"):  # how the engine decoded: compiled steps, the kernel, the peak batch
                async with session.get(url + "/metrics") as r:
                    engines = (await r.json()).get("engine", {}) if r.status == 200 else {}
                result["engine"] = {key: value for state in engines.values() if isinstance(state, dict)
                                    for key, value in state.items()
                                    if key in ("compiled_decode_models", "attention_kernel_models", "peak_batch_size")}
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        memory.stop()
        log.close()
    result["rss_peak"], result["hwm"] = memory.peak, memory.hwm
    return result


async def level_round(session: Any, url: str, model: str, args: argparse.Namespace, prompts: Prompts,
                      level: int) -> dict[str, Any]:
    """``level`` requests with unique prompts sent at once."""
    texts = [prompts.text(args.prompt) for _ in range(level)]
    start = time.perf_counter()
    runs = await asyncio.gather(*(stream(session, url, model, user(t), args.gen) for t in texts))
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in runs)
    ttft = [r["first"] - r["start"] for r in runs]
    # Most requests decoding at once: overlap of [first, end] intervals.
    edges = sorted([(r["first"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    live = peak = 0
    for _, d in edges:
        live += d
        peak = max(peak, live)
    return {"tok_s": tokens / wall, "ttft_mean": statistics.mean(ttft), "ttft_max": max(ttft), "tokens": tokens,
            "together": peak}


async def prefix_round(session: Any, url: str, model: str, args: argparse.Namespace, prompts: Prompts,
                       probe: Any = None) -> dict[str, Any]:
    """Median TTFT over ``--prefix-reps`` rounds: cold, exact repeat, shared system prompt + new question
    (with a ``probe``, also the engine's own time to the first token of each)."""
    times: dict[str, list[float]] = {"cold": [], "repeat": [], "shared": []}
    engine: dict[str, list[float]] = {key: [] for key in times}
    traces: dict[str, float] = dict.fromkeys(times, 0.0)
    cached = []
    for _ in range(args.prefix_reps):
        system = prompts.text(args.prefix)
        question = prompts.text(16)
        for key, messages in (("cold", user(question, system)), ("repeat", user(question, system)),
                              ("shared", user(prompts.text(16), system))):
            out, counters = await measured(probe, stream(session, url, model, messages, 4))
            times[key].append(out["first"] - out["start"])
            if counters and counters["first_tokens"]:
                engine[key].append(counters["first_token_seconds"] / counters["first_tokens"])
                traces[key] += counters["compiled_traces"]
            if key == "repeat":
                cached.append(out["cached"])
    result: dict[str, Any] = {key: statistics.median(values) for key, values in times.items()}
    result["cached_tokens"] = statistics.median(cached)
    if all(engine.values()):
        result["engine_first_token"] = {key: statistics.median(values) for key, values in engine.items()}
        result["engine_traces"] = traces
    return result


async def stall_round(session: Any, url: str, model: str, args: argparse.Namespace, prompts: Prompts
                      ) -> dict[str, float]:
    """Worst inter-chunk gap of running streams while a ``--long``-token prompt is prefilled."""
    ticks: list[list[float]] = [[] for _ in range(args.stall_streams)]
    runners = [asyncio.ensure_future(stream(session, url, model, user(prompts.text(32)), args.stall_gen, ticks[i]))
               for i in range(args.stall_streams)]
    while not all(len(t) >= 8 for t in ticks):
        if any(r.done() for r in runners):
            break
        await asyncio.sleep(0.01)
    long = await stream(session, url, model, user(prompts.text(args.long)), 2)
    await asyncio.gather(*runners)
    window = (long["start"], long["first"])
    gaps_in, gaps_before = [], []
    for times in ticks:
        for a, b in itertools.pairwise(times):
            if a < window[0]:
                gaps_before.append(b - a)
            elif a <= window[1]:
                gaps_in.append(b - a)
    return {"long_ttft": window[1] - window[0], "worst_gap": max(gaps_in, default=0.0),
            "median_gap": statistics.median(gaps_before) if gaps_before else 0.0,
            "gaps_during": len(gaps_in)}


def print_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    names = list(results)
    print(f"\naggregate decode tok/s (TTFT mean / max, s; most decoding at once) - prompt {args.prompt}, "
          f"gen {args.gen}; median of {args.rounds} rounds")
    print("| streams | " + " | ".join(names) + " | " + " | ".join(f"{n}/{names[-1]}" for n in names[:-1]) + " |")
    print("|---" * (1 + 2 * len(names) - 1) + "|")
    for level in args.levels:
        cells = []
        for n in names:
            lv = results[n]["levels"].get(level)
            cells.append(f"{lv['tok_s']:.1f} ({lv['ttft_mean']:.2f} / {lv['ttft_max']:.2f}; {lv['together']})"
                         if lv else "-")
        ratios = []
        base = results[names[-1]]["levels"].get(level)
        for n in names[:-1]:
            lv = results[n]["levels"].get(level)
            ratios.append(f"{lv['tok_s'] / base['tok_s']:.2f}x" if lv and base else "-")
        print(f"| {level} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    print(f"\nTTFT for a {args.prefix}-token prefix, s (median of {args.prefix_reps})")
    print("| server | cold | repeat | shared system prompt | cold/repeat | cold/shared | cached tokens reported |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        p = results[n].get("prefix")
        if p:
            print(f"| {n} | {p['cold']:.3f} | {p['repeat']:.3f} | {p['shared']:.3f} | {p['cold'] / p['repeat']:.1f}x | "
                  f"{p['cold'] / p['shared']:.1f}x | {p['cached_tokens']:.0f} |")
    print(f"\nrunning streams while a {args.long}-token prompt arrives ({args.stall_streams} streams)" if args.long
          else "\nmemory (no long-prompt run: --long 0)")
    print("| server | long prompt TTFT s | worst gap s | median gap before s | peak RSS MiB | VmHWM MiB |")
    print("|---|---|---|---|---|---|")
    for n in names:
        s = results[n].get("stall")
        stall = f"{s['long_ttft']:.2f} | {s['worst_gap']:.3f} | {s['median_gap']:.3f}" if s else "- | - | -"
        print(f"| {n} | {stall} | {results[n]['rss_peak'] / 2**20:.0f} | {results[n]['hwm'] / 2**20:.0f} |")
    diagnosed = [(n, level, lv["engine"]) for n in names for level, lv in results[n]["levels"].items()
                 if lv.get("engine")]
    if diagnosed:
        print("\nhiggs engines during the median round (/metrics differences): new compiled-step shapes and the "
              "host s their traces took, s spent prefilling and decoding, prompts prefilled in groups (in how many "
              "calls), engine vs client time to first token")
        print("| server | streams | traces | trace s | prefill s | decode s | prompts in groups (calls) "
              "| engine TTFT mean | client TTFT mean |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n, level, e in diagnosed:
            ttft = e["first_token_seconds"] / e["first_tokens"] if e["first_tokens"] else float("nan")
            print(f"| {n} | {level} | {e['compiled_traces']:.0f} | {e['compiled_trace_seconds']:.3f} | "
                  f"{e['prefill_seconds']:.3f} | {e['decode_seconds']:.3f} | "
                  f"{e.get('grouped_prompts', 0):.0f} ({e.get('grouped_prefills', 0):.0f}) | "
                  f"{ttft:.3f} | "
                  f"{results[n]['levels'][level]['ttft_mean']:.3f} |")
    for n in names:
        p = results[n].get("prefix") or {}
        if p.get("engine_first_token"):
            traces = p.get("engine_traces", {})
            print(f"{n} engine time to first token (prefix workloads; new compiled-step shapes in all reps): "
                  + ", ".join(f"{k} {v:.3f} s ({traces.get(k, 0):.0f})" for k, v in p["engine_first_token"].items()))
    for n in names:
        if results[n].get("engine"):
            print(f"{n} engine (/metrics): " + ", ".join(f"{k} {v}" for k, v in results[n]["engine"].items()))


async def main_async(args: argparse.Namespace) -> int:
    import mlx.core as mx  # noqa: TID251 (the bench reports the device)

    cpu = mx.default_device() == mx.cpu
    dtype = args.dtype or ("float32" if cpu else "bfloat16")
    model_dir = Path(args.model_dir) if args.model_dir else build_model(args.preset, dtype, args.bits, args.cache)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    prompts = Prompts(model_dir, args.seed)
    eager_config = args.log_dir / "higgs-eager.toml"
    eager_config.write_text("[server]\ncompiled_decode = false\n")
    masked_config = args.log_dir / "higgs-masked.toml"
    masked_config.write_text("[server]\nattention_kernel = false\n")
    padded_config = args.log_dir / "higgs-padded.toml"
    padded_config.write_text("[server]\nprefill_padding = true\n")
    commands = {
        "higgs": [sys.executable, "-m", "higgs", "serve", "--model", str(model_dir), "--max-tokens", "100000"],
        "higgs-eager": [sys.executable, "-m", "higgs", "serve", "--config", str(eager_config), "--model",
                        str(model_dir), "--max-tokens", "100000"],
        "higgs-masked": [sys.executable, "-m", "higgs", "serve", "--config", str(masked_config), "--model",
                         str(model_dir), "--max-tokens", "100000"],
        "higgs-padded": [sys.executable, "-m", "higgs", "serve", "--config", str(padded_config), "--model",
                         str(model_dir), "--max-tokens", "100000"],
        "higgs-nobatch": [sys.executable, "-m", "higgs", "serve", "--model", str(model_dir), "--no-batch"],
        "mlx_lm": [sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir)],
    }
    commands["higgs-nocudnn"], commands["mlx_lm-nocudnn"] = commands["higgs"], commands["mlx_lm"]
    print(f"model {model_dir} ({dtype}, {args.bits}-bit); device {mx.default_device()}; mlx {mx.__version__}; "
          f"levels {args.levels}; prompt {args.prompt}, gen {args.gen}; prefix {args.prefix}; long {args.long}")
    results: dict[str, dict[str, Any]] = {}
    for offset, name in enumerate(args.servers):
        print(f"-- {name}", flush=True)
        results[name] = await run_server(name, commands[name], args.port + offset, model_dir, args, prompts)
        print(json.dumps(results[name], default=float), flush=True)
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap)
    ap.add_argument("--servers", default="higgs,mlx_lm", help="comma list of higgs, higgs-eager (compiled decode "
                    "steps off), higgs-masked (compiled steps with MLX's masked attention, not the decode-attention "
                    "kernel), higgs-padded (prefill calls padded to a few shapes), higgs-nobatch, "
                    "mlx_lm (the last one is the baseline of the ratios); higgs-nocudnn and mlx_lm-nocudnn: with "
                    "MLX_CUDA_USE_CUDNN_SDPA=0")
    ap.add_argument("--levels", default="1,2,4,8,16")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens per request at each level")
    ap.add_argument("--gen", type=int, default=64, help="generated tokens per request")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per level; the median-throughput one is shown")
    ap.add_argument("--prefix", type=int, default=2048, help="tokens of the repeated/shared prefix")
    ap.add_argument("--prefix-reps", type=int, default=3)
    ap.add_argument("--long", type=int, default=4096, help="tokens of the prompt that arrives mid-stream (0 = skip)")
    ap.add_argument("--stall-streams", type=int, default=4)
    ap.add_argument("--stall-gen", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="levels 1,4,8; gen 32; prefix 1024; long 2048; 1 rep")
    ap.add_argument("--port", type=int, default=8751)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=900, help="per server; later rounds are skipped")
    ap.add_argument("--request-timeout", type=float, default=600)
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp/higgs-bench-batching"))
    ap.add_argument("--json", help="write the raw numbers here")
    ap.add_argument("--profile", action="store_true", help="py-spy the servers during the levels (into --log-dir)")
    ap.add_argument("--profile-seconds", type=float, default=20)
    args = ap.parse_args()
    if args.quick:
        args.levels, args.gen, args.prefix, args.long, args.prefix_reps = "1,4,8", 32, 1024, 2048, 1
        args.rounds = 1
        args.stall_gen = 120
    args.levels = [int(x) for x in str(args.levels).split(",")]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
