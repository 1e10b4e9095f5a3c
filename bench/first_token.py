#!/usr/bin/env python3
"""Time to the first token, taken apart: MLX's own model calls against mlx-lm's and higgs's first token.

A request's time to its first token is one prefill call plus everything around it. This bench times, on
one synthetic model in one process (``bench/make_model.py``), the pieces one at a time, so a floor seen
over HTTP (``bench/batching.py``) can be placed:

- **model call, fresh prompt**: a ``--prompt``-token prompt on a new cache as servers prefill it (all but the
  last token into the cache, then the last token's logits). "new length" gives every repeat a length not
  seen before (what a server meets: every prompt has its own length), "same length" repeats one length
  (shapes MLX has met: anything built per shape, such as kernels or attention plans, is reused);
- **model call, one token after a cached prefix**: the work of a prefix-cache hit with one token left to
  compute, on a cache holding ``--prefix`` positions (new or same length as above);
- **prompts prefilled together**: the engine's padded prefill of ``--burst`` fresh prompts at once (what a
  burst of requests gets), at a new padded width each repeat, at one width, and at a new row count;
- **mlx-lm generate_step**: the time to the first token it yields for a fresh prompt;
- **higgs engine, fresh prompt** and **higgs engine, prefix hit**: a ``Job`` through the engine thread
  until its first token reaches an asyncio consumer, for a fresh prompt, for the exact repeat of a
  ``--prefix``-token prompt (no model call: the prefix cache stored its last logits) and for that prompt
  with 16 new tokens after it; with the engine's counters (``/metrics``) split into prefill and decode;
- **padded** rows: the same with ``prefill_padding`` (``higgs_mlx.prefill_shapes``: prefill calls padded to
  a few widths and row counts, so new lengths reuse shapes met before).

    python bench/first_token.py                          # CPU: tiny preset, float32
    python bench/first_token.py --preset qwen3-1.7b      # GPU: bfloat16 by default
    MLX_CUDA_USE_CUDNN_SDPA=0 python bench/first_token.py --preset qwen3-1.7b   # prefill without cuDNN
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from engine import random_prompt, run_higgs, run_mlx_lm  # noqa: E402
from synthetic import add_model_arguments, build_model  # noqa: E402


def model_call(model: Any, tokens: list[int], cache: list[Any]) -> float:
    """Seconds to the first token's logits the way servers prefill: every token but the last into the
    cache (its state evaluated, no logits), then the last token's logits."""
    import mlx.core as mx  # noqa: TID251 (the bench times MLX itself)

    start = time.perf_counter()
    if len(tokens) > 1:
        model(mx.array(tokens[:-1])[None], cache=cache)
        mx.eval([c.state for c in cache])
    logits = model(mx.array(tokens[-1:])[None], cache=cache)[:, -1, :]
    mx.eval(logits)
    return time.perf_counter() - start


def prefix_cache(model: Any, positions: int) -> list[Any]:
    """A cache holding ``positions`` random keys and values per layer (the shape of a prefix-cache hit)."""
    import mlx.core as mx  # noqa: TID251
    from mlx_lm.models.cache import KVCache, make_prompt_cache  # noqa: TID251

    probe = make_prompt_cache(model)
    model(mx.array([[1]]), cache=probe)
    caches = []
    for layer in probe:
        _, heads, _, dim = layer.keys.shape
        c = KVCache()
        c.keys = mx.random.normal((1, heads, positions, dim)).astype(layer.keys.dtype)
        c.values = mx.random.normal((1, heads, positions, dim)).astype(layer.values.dtype)
        c.offset = positions
        caches.append(c)
    mx.eval([(c.keys, c.values) for c in caches])
    return caches


def group_call(engine: Any, lm: Any, prompts: list[list[int]], padded: bool = False) -> float:
    """Seconds for the engine's padded prefill of several fresh prompts together (``prefill_group``, what a
    burst of requests gets), run on the engine thread, up to their first tokens."""
    from higgs_mlx.batching import prefill_group
    from higgs_mlx.engine import Job
    from higgs_mlx.sampling import RequestSampler
    from mlx_lm.models.cache import make_prompt_cache  # noqa: TID251

    from higgs.messages import Sampling

    def run() -> float:
        import mlx.core as mx  # noqa: TID251

        jobs = [Job(lm=lm, prompt=p, max_tokens=1, sampler=RequestSampler(Sampling(temperature=0)),
                    emit=lambda _: None) for p in prompts]
        for job in jobs:
            job.cache = make_prompt_cache(lm.model)
        start = time.perf_counter()
        _, tokens, _, _ = prefill_group(jobs, 2048, padded)
        mx.eval(tokens)
        return time.perf_counter() - start

    seconds: float = engine.call(run).result()
    return seconds


def timed(runs: int, one: Callable[[int], float]) -> list[float]:
    """``one(i)`` for i in range(runs), in milliseconds."""
    return [one(i) * 1000 for i in range(runs)]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}..{max(values):.1f})"


async def engine_first_token(engine: Any, lm: Any, prompt: list[int]) -> tuple[float, dict[str, float]]:
    """(seconds to the first token, growth of the engine's counters) for a job of one token."""
    keys = ("prefill_seconds", "decode_seconds", "compiled_traces")
    before = {key: engine.state()[key] for key in keys}
    first, _, _ = await run_higgs(engine, lm, prompt, 1)
    return first, {key: engine.state()[key] - before[key] for key in keys}


async def main_async(args: argparse.Namespace) -> int:
    import mlx.core as mx  # noqa: TID251
    import mlx_lm  # noqa: TID251
    from higgs_mlx.engine import Engine
    from higgs_mlx.loader import load_model_dir, on_cpu
    from mlx_lm import load  # noqa: TID251
    from mlx_lm.models.cache import make_prompt_cache  # noqa: TID251

    from higgs.specs import ArchitectureSpec

    dtype = args.dtype or ("float32" if on_cpu() else "bfloat16")
    model_dir = Path(args.model_dir) if args.model_dir else build_model(args.preset, dtype, args.bits, args.cache)
    config = json.loads((model_dir / "config.json").read_text())
    vocab = config["vocab_size"]
    model, _ = load(str(model_dir))
    arch = ArchitectureSpec(name=config["model_type"], model_types=(config["model_type"],),
                            module=f"mlx_lm.models.{config['model_type']}")
    engines, lms = {}, {}
    for name in ("plain", "padded"):  # the engine as configured by default, and with prefill_padding
        engine = engines[name] = Engine(prefill_padding=name == "padded")
        engine.start()
        loaded = await asyncio.wrap_future(engine.call(
            lambda: load_model_dir(model_dir, {arch.model_types[0]: arch}, name="bench")))
        lms[name] = dataclasses.replace(loaded, eos_ids=set())
        await asyncio.wrap_future(engine.call(functools.partial(engine.prepare, lms[name])))
    engine, lm = engines["plain"], lms["plain"]
    n, runs, seed = args.prompt, args.repeats, args.seed
    prompt = functools.partial(random_prompt, vocab)

    # warm-up: every kind of call once, at lengths the measured runs do not use
    model_call(model, prompt(n + 3 * runs + 7, seed), make_prompt_cache(model))
    model_call(model, prompt(1, seed), prefix_cache(model, args.prefix + 3 * runs + 7))
    run_mlx_lm(model, prompt(n + 3 * runs + 9, seed), 2)
    await run_higgs(engine, lm, prompt(n + 3 * runs + 11, seed), 2)
    group_call(engine, lm, [prompt(n + 3 * runs + 13 - j % 3, seed + j) for j in range(args.burst)])
    await run_higgs(engines["padded"], lms["padded"], prompt(n + 3 * runs + 11, seed), 2)
    group_call(engines["padded"], lms["padded"], [prompt(n + 3 * runs + 13 - j % 3, seed + j)
                                                  for j in range(args.burst)], True)

    rows: dict[str, list[float]] = {}
    rows["model call, fresh prompt, new length"] = timed(
        runs, lambda i: model_call(model, prompt(n + i, seed + i), make_prompt_cache(model)))
    rows["model call, fresh prompt, same length"] = timed(
        runs, lambda i: model_call(model, prompt(n, seed + 100 + i), make_prompt_cache(model)))
    hits = [prefix_cache(model, args.prefix + i) for i in range(runs)]
    rows["model call, 1 token after the prefix, new length"] = timed(
        runs, lambda i: model_call(model, prompt(1, seed + i), hits[i]))
    same = [prefix_cache(model, args.prefix) for _ in range(runs)]
    rows["model call, 1 token after the prefix, same length"] = timed(
        runs, lambda i: model_call(model, prompt(1, seed + i), same[i]))
    burst = args.burst
    rows[f"{burst} prompts prefilled together, new width"] = timed(
        runs, lambda i: group_call(engine, lm, [prompt(n + i - j % 3, seed + 500 + 10 * i + j) for j in range(burst)]))
    rows[f"{burst} prompts prefilled together, same width"] = timed(
        runs, lambda i: group_call(engine, lm, [prompt(n - j % 3, seed + 600 + 10 * i + j) for j in range(burst)]))
    rows[f"2..{burst} prompts prefilled together, new row count"] = timed(
        runs, lambda i: group_call(engine, lm, [prompt(n - j % 3, seed + 700 + 10 * i + j)
                                                for j in range(2 + i % (burst - 1))]))
    rows[f"{burst} prompts prefilled together, padded, new width"] = timed(
        runs, lambda i: group_call(engines["padded"], lms["padded"], [prompt(n + i - j % 3, seed + 800 + 10 * i + j)
                                                                      for j in range(burst)], True))
    rows[f"2..{burst} prompts prefilled together, padded, new row count"] = timed(
        runs, lambda i: group_call(engines["padded"], lms["padded"], [prompt(n - j % 3, seed + 900 + 10 * i + j)
                                                                      for j in range(2 + i % (burst - 1))], True))
    rows["mlx-lm generate_step, fresh prompt"] = timed(
        runs, lambda i: run_mlx_lm(model, prompt(n + runs + i, seed + 200 + i), 2)[0])
    splits: dict[str, list[dict[str, float]]] = {"fresh": [], "hit": [], "suffix": []}
    fresh, hit, suffix = [], [], []
    for i in range(runs):
        seconds, split = await engine_first_token(engine, lm, prompt(n + i, seed + 300 + i))
        fresh.append(seconds * 1000)
        splits["fresh"].append(split)
        long = prompt(args.prefix + i, seed + 400 + i)
        await run_higgs(engine, lm, long, 2)  # cold: its KV (and last logits) go into the prefix cache
        seconds, split = await engine_first_token(engine, lm, long)
        hit.append(seconds * 1000)
        splits["hit"].append(split)
        seconds, split = await engine_first_token(engine, lm, long + prompt(16, seed + 450 + i))
        suffix.append(seconds * 1000)
        splits["suffix"].append(split)
    rows["higgs engine, fresh prompt"] = fresh
    rows["higgs engine, prefix hit (exact repeat: stored logits)"] = hit
    rows["higgs engine, prefix hit + 16 new tokens"] = suffix
    padded = []
    for i in range(runs):
        fresh_prompt = prompt(n + i, seed + 1000 + i)
        seconds, _ = await engine_first_token(engines["padded"], lms["padded"], fresh_prompt)
        padded.append(seconds * 1000)
    rows["higgs engine, padded prefill, fresh prompt"] = padded
    for each in engines.values():
        each.stop()

    print(f"model {model_dir.name} ({config['model_type']}, hidden {config['hidden_size']}, "
          f"{config['num_hidden_layers']} layers, {args.bits}-bit, {dtype}); device {mx.default_device()}; "
          f"mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}; prompt {n}, prefix {args.prefix}, {runs} runs each\n")
    print("| time to first token | ms, median (min..max) |")
    print("|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {spread(values)} |")
    print("\nhiggs engine counters per request (median): prefill s / decode s / new compiled-step shapes")
    for name, values in splits.items():
        print(f"  {name}: " + " / ".join(f"{statistics.median(v[key] for v in values):.4f}"
                                          for key in ("prefill_seconds", "decode_seconds", "compiled_traces")))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap)
    ap.add_argument("--prompt", type=int, default=128, help="tokens of a fresh prompt")
    ap.add_argument("--prefix", type=int, default=2048, help="cached positions before a prefix hit's token")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--burst", type=int, default=8, help="prompts prefilled together (widths differ by up to 2)")
    ap.add_argument("--seed", type=int, default=0)
    return asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
