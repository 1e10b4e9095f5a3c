#!/usr/bin/env python3
"""Single-stream decode and prefill: higgs's local engine vs mlx-lm's own ``generate_step``.

Both run in this process on the same synthetic model (``bench/make_model.py``: random weights, a real
model's exact shapes and quantization), the same random prompts (a fresh one per repeat, so no prefix
cache helps) and greedy decoding that ignores EOS, so every run generates exactly ``--gen`` tokens. Runs
alternate (mlx-lm, higgs, mlx-lm, ...) after a warm-up; the table shows the median and the spread (min..max).

higgs is measured as a server sees it: a ``Job`` goes to the engine thread, tokens come back to an asyncio
loop through ``loop.call_soon_threadsafe`` (detokenization and stop matching included).

    python bench/engine.py                                  # CPU: tiny preset, float32
    python bench/engine.py --preset llama-3.2-1b-instruct   # GPU (CUDA/Metal): bfloat16 by default
    python bench/engine.py --prompt 512 --gen 128 --repeats 7
    python bench/engine.py --http          # also: `higgs serve` vs `mlx_lm server` over HTTP, streaming

With ``--http`` both servers are started in turn on loopback ports with the same model directory and driven
with the same streaming chat requests (temperature 0, ``ignore_eos``); TTFT and decode tok/s are measured at
the client, tokens counted from ``usage``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from synthetic import add_model_arguments, build_model  # noqa: E402


def random_prompt(vocab: int, n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(256, min(vocab, 30000)) for _ in range(n)]


def run_mlx_lm(model, prompt: list[int], gen: int) -> tuple[float, float, int]:
    """(prefill seconds = time to the first token, decode seconds for the rest, tokens) with generate_step."""
    import mlx.core as mx  # noqa: TID251 (bench measures mlx directly)
    from mlx_lm.generate import generate_step  # noqa: TID251

    start = time.perf_counter()
    first = None
    count = 0
    for _token, _ in generate_step(mx.array(prompt), model, max_tokens=gen):
        count += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return first - start, end - first, count


async def run_higgs(engine, lm, prompt: list[int], gen: int) -> tuple[float, float, int]:
    """The same measurement through higgs's engine thread and an asyncio consumer."""
    from higgs_mlx.engine import Chunk, Done, Failed, Job
    from higgs_mlx.sampling import RequestSampler

    from higgs.messages import Sampling

    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    job = Job(lm=lm, prompt=prompt, max_tokens=gen, sampler=RequestSampler(Sampling(temperature=0)),
              emit=lambda item: loop.call_soon_threadsafe(inbox.put_nowait, item))
    start = time.perf_counter()
    engine.submit(job)
    first = None
    while True:
        item = await inbox.get()
        if isinstance(item, Chunk) and first is None:
            first = time.perf_counter()
        elif isinstance(item, Failed):
            raise item.error
        elif isinstance(item, Done):
            end = time.perf_counter()
            return (first or end) - start, end - (first or end), item.output_tokens


def random_words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    return " ".join("".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(n))


async def http_stream(session, url: str, model: str, text: str, gen: int) -> tuple[float, float, int]:
    """One streaming chat request: (TTFT s, decode s after the first content chunk, completion tokens)."""
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": gen,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    start = time.perf_counter()
    first = None
    tokens = 0
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens", tokens)
            if first is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter()
    end = time.perf_counter()
    return (first or end) - start, end - (first or end), tokens


async def bench_http(model_dir: Path, args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Start each server in turn, warm it up, and time ``--repeats`` identical streaming requests."""
    import subprocess

    import aiohttp

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])))
    servers = {
        "mlx_lm server": [sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir)],
        "higgs serve": [sys.executable, "-m", "higgs", "serve", "--model", str(model_dir)],
    }
    prompts = [random_words(args.prompt * 2 // 3, args.seed + i) for i in range(args.repeats)]
    results: dict[str, dict[str, list[float]]] = {}
    for offset, (name, command) in enumerate(servers.items()):
        port = args.port + offset
        process = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        numbers: dict[str, list[float]] = {"ttft": [], "decode": []}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
                for _ in range(600):
                    try:
                        async with session.get(url + "/v1/models") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    if process.poll() is not None:
                        raise SystemExit(f"{name} exited with {process.returncode}")
                    await asyncio.sleep(0.5)
                await http_stream(session, url, str(model_dir), random_words(16, 99), min(args.gen, 16))
                for text in prompts:
                    ttft, decode_s, n = await http_stream(session, url, str(model_dir), text, args.gen)
                    numbers["ttft"].append(ttft)
                    numbers["decode"].append((n - 1) / decode_s if decode_s > 0 and n > 1 else 0.0)
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        results[name] = numbers
    return results


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):9.1f}  ({min(values):.1f}..{max(values):.1f})"


async def main_async(args: argparse.Namespace) -> int:
    import mlx.core as mx  # noqa: TID251 (bench measures mlx directly)
    from higgs_mlx.engine import Engine
    from higgs_mlx.loader import load_model_dir, on_cpu
    from mlx_lm import load  # noqa: TID251

    from higgs.specs import ArchitectureSpec

    cpu = on_cpu()
    dtype = args.dtype or ("float32" if cpu else "bfloat16")
    model_dir = Path(args.model_dir) if args.model_dir else build_model(args.preset, dtype, args.bits, args.cache)
    config = json.loads((model_dir / "config.json").read_text())
    arch = ArchitectureSpec(name=config["model_type"], model_types=(config["model_type"],),
                            module=f"mlx_lm.models.{config['model_type']}")
    ref_model, _ = load(str(model_dir))
    # One engine per variant, each on its own thread; the compiled decode step is the default.
    engines = {"higgs engine": Engine()}
    if args.masked:
        engines["higgs engine (masked attention)"] = Engine(attention_kernel=False)
    if args.eager:
        engines["higgs engine (eager)"] = Engine(compiled_decode=False)
    lms = {}
    for name, engine in engines.items():
        engine.start()
        lm = await asyncio.wrap_future(engine.call(
            lambda: load_model_dir(model_dir, {arch.model_types[0]: arch}, name="bench")))
        lm = dataclasses.replace(lm, eos_ids=set())  # generate exactly --gen tokens, like ignore_eos
        _, decoder = await asyncio.wrap_future(engine.call(functools.partial(engine.prepare, lm)))
        lms[name] = lm
        steps = ("off" if decoder is None else "on, decode-attention kernel" if decoder.attention_kernel
                 else "on, masked attention")
        print(f"{name}: compiled decode steps {steps} {engine.eager_reasons or ''}", flush=True)
    # A fresh prompt per run (the pair of runs in one repeat shares it): higgs's prefix cache must not turn
    # a repeated prompt into a cache hit and the prefill measurement into a lookup.
    prompts = [random_prompt(config["vocab_size"], args.prompt, args.seed + 1000 + i) for i in range(args.repeats)]
    prompt = prompts[0]

    for w in range(args.warmup):
        warm = random_prompt(config["vocab_size"], args.prompt, args.seed + w)
        run_mlx_lm(ref_model, warm, args.gen)
        for name, engine in engines.items():
            await run_higgs(engine, lms[name], list(reversed(warm)), args.gen)

    names = ["mlx-lm generate_step", *engines]
    results: dict[str, dict[str, list[float]]] = {name: {"prefill": [], "decode": []} for name in names}
    for rep in range(args.repeats):
        prompt = prompts[rep]
        for name in (names if rep % 2 == 0 else names[::-1]):
            if name in engines:
                prefill_s, decode_s, n = await run_higgs(engines[name], lms[name], prompt, args.gen)
            else:
                prefill_s, decode_s, n = run_mlx_lm(ref_model, prompt, args.gen)
            if n != args.gen:
                raise SystemExit(f"{name} produced {n} tokens, expected {args.gen}")
            results[name]["prefill"].append(len(prompt) / prefill_s)
            results[name]["decode"].append((n - 1) / decode_s)
    for engine in engines.values():
        engine.stop()

    import mlx_lm  # noqa: TID251

    device = mx.default_device()
    print(f"model {model_dir.name} ({config['model_type']}, hidden {config['hidden_size']}, "
          f"{config['num_hidden_layers']} layers, {args.bits}-bit, {dtype}); device {device}; "
          f"mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}")
    print(f"prompt {len(prompt)} tokens, {args.gen} generated, greedy, {args.repeats} runs each "
          f"(alternating), median (min..max)\n")
    print(f"{'':22s}  {'prefill tok/s':>24s}  {'decode tok/s':>24s}")
    for name, numbers in results.items():
        print(f"{name:22s}  {spread(numbers['prefill']):>24s}  {spread(numbers['decode']):>24s}")
    base = results["mlx-lm generate_step"]
    print()
    for name in engines:
        ours = results[name]
        prefill_ratio = statistics.median(ours["prefill"]) / statistics.median(base["prefill"])
        decode_ratio = statistics.median(ours["decode"]) / statistics.median(base["decode"])
        print(f"{name} / mlx-lm: prefill {prefill_ratio:.3f}x, decode {decode_ratio:.3f}x (target decode >= 0.97x)")
    if args.http:
        http = await bench_http(model_dir, args)
        print(f"\nover HTTP (streaming chat, ~{args.prompt}-token prompts, {args.gen} tokens, {args.repeats} requests "
              "each, one server at a time), median (min..max)\n")
        print(f"{'':22s}  {'TTFT ms':>24s}  {'decode tok/s':>24s}")
        for name, numbers in http.items():
            print(f"{name:22s}  {spread([t * 1000 for t in numbers['ttft']]):>24s}  {spread(numbers['decode']):>24s}")
        ours, base = http["higgs serve"], http["mlx_lm server"]
        ratio = statistics.median(ours["decode"]) / max(statistics.median(base["decode"]), 1e-9)
        print(f"\nhiggs serve / mlx_lm server: decode {ratio:.3f}x")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap)
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    ap.add_argument("--gen", type=int, default=64, help="generated tokens per run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eager", action="store_true", help="also run the engine with compiled decode steps off")
    ap.add_argument("--masked", action="store_true",
                    help="also run compiled steps with MLX's masked attention instead of the decode-attention kernel "
                         "(the CUDA default)")
    ap.add_argument("--http", action="store_true", help="also compare `higgs serve` with `mlx_lm server` over HTTP")
    ap.add_argument("--port", type=int, default=8731, help="first loopback port for --http servers")
    return asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
