#!/usr/bin/env python3
"""Vision: time to first token and decode tok/s for one image + a short prompt, higgs vs mlx-vlm's generate.

Both run in this process on the same synthetic ``llava-qwen2`` model (``higgs_arch_llava_qwen2.testing``:
mlx-vlm's own classes, random weights, nanoLLaVA-1.5's exact shapes with ``--size nano``: Qwen1.5-0.5B text
model, SigLIP-so400m/14 tower, 729 image tokens), the same 384x384 PNG sent as a base64 data URL, the same
~50-token question and greedy decoding; special tokens are silenced in the synthetic LM head, so every run
generates exactly ``--gen`` tokens. Runs alternate (mlx-vlm, higgs, higgs, mlx-vlm, ...) after a warm-up;
the table shows the median and the spread (min..max).

- **higgs**: a started ``MlxProvider`` (the local engine, engine thread + asyncio), given a canonical chat
  request with the image block, as a server sees it after parsing: image decode, preprocessing, the
  vision tower on the engine thread, chunked prefill, decode, detokenization and stop matching. TTFT is
  the time to the first text delta.
- **mlx-vlm**: ``mlx_vlm.stream_generate`` with the same data URL (it decodes the PNG too), the prompt
  formatted by its own ``apply_chat_template``; TTFT is the time to its first yielded token.

    python bench/vision.py                         # nano shapes (GPU: float16; CPU: float32, slow)
    python bench/vision.py --size tiny             # a smoke run anywhere (seconds)
    python bench/vision.py --gen 128 --repeats 7 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for extra in (ROOT / "plugins" / "higgs-arch-llava-qwen2", ROOT / "plugins" / "higgs-mlx"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))


def build_model(size: str, dtype: str, root: Path) -> Path:
    """The synthetic model directory (made once per size and dtype, then reused)."""
    from higgs_arch_llava_qwen2.testing import build_llava_qwen2

    out = root / f"llava-qwen2-{size}-{dtype}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    # A 24-layer random model needs no extra gain to vary its output; tiny ones do (see testing.py).
    gain = 4.0 if size == "tiny" else 1.0
    return build_llava_qwen2(out, size=size, dtype=dtype, weight_gain=gain, seed=0)


def make_image(seed: int, side: int = 384) -> str:
    """A random side x side RGB PNG as a data URL."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def make_question(tokenizer, n_tokens: int, seed: int) -> str:
    """Words whose tokenization is ~``n_tokens`` long."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words: list[str] = []
    while len(tokenizer.encode(" ".join(words) + "?")) < n_tokens:
        words.append("".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))))
    return " ".join(words) + "?"


def run_mlx_vlm(model, processor, prompt: str, image: str, gen: int) -> tuple[float, float, int]:
    """(TTFT s, decode s for the rest, tokens) with mlx-vlm's own stream_generate."""
    from mlx_vlm import stream_generate

    start = time.perf_counter()
    first = None
    n = 0
    for response in stream_generate(model, processor, prompt, image=[image], max_tokens=gen, temperature=0.0):
        n = response.generation_tokens  # the last item repeats the count with the finish reason
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return (first or end) - start, end - (first or end), n


async def run_higgs(provider, model: str, question: str, image: str, gen: int) -> tuple[float, float, int]:
    """The same measurement through higgs's provider (engine thread + asyncio consumer)."""
    from higgs.interfaces import CallContext, RouteDecision
    from higgs.messages import (
        BlockDelta,
        ChatRequest,
        ImageBlock,
        Message,
        Sampling,
        StreamError,
        StreamFinish,
        TextBlock,
    )

    media, _, data = image.partition(",")
    request = ChatRequest(model=model, max_tokens=gen, sampling=Sampling(temperature=0), stream=True,
                          extra={"ignore_eos": True},
                          messages=[Message(role="user", content=[
                              ImageBlock(media_type=media[5:].split(";")[0], data=data), TextBlock(text=question)])])
    call = CallContext(request_id="bench", client_format="openai", headers={},
                       route=RouteDecision(providers=("higgs",), model=model, rule="local", method="local"))
    start = time.perf_counter()
    first = None
    tokens = 0
    async for event in provider.chat_stream(request, call):
        if isinstance(event, BlockDelta) and first is None:
            first = time.perf_counter()
        elif isinstance(event, StreamFinish):
            tokens = event.usage.output_tokens
        elif isinstance(event, StreamError):
            raise RuntimeError(event.error.message)
    end = time.perf_counter()
    return (first or end) - start, end - (first or end), tokens


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):9.1f}  ({min(values):.1f}..{max(values):.1f})"


async def main_async(args: argparse.Namespace) -> int:
    import mlx.core as mx  # noqa: TID251 (bench measures mlx directly)
    import mlx_vlm
    from higgs_arch_llava_qwen2 import SPEC
    from higgs_mlx.loader import on_cpu
    from higgs_mlx.provider import MlxProvider
    from mlx_vlm import load
    from mlx_vlm.prompt_utils import apply_chat_template

    from higgs.config import HiggsSettings, ModelSettings, ProviderSettings
    from higgs.interfaces import ProviderContext

    cpu = on_cpu()
    size = args.size
    dtype = args.dtype or ("float32" if cpu else "float16")
    model_dir = Path(args.model_dir) if args.model_dir else build_model(size, dtype, args.cache)
    config = json.loads((model_dir / "config.json").read_text())

    model, processor = load(str(model_dir))
    tokenizer = processor.tokenizer if hasattr(processor, "tokenizer") else processor
    question = make_question(tokenizer, args.prompt, args.seed)
    vlm_prompt = apply_chat_template(processor, model.config, question, num_images=1)

    settings = HiggsSettings(models=[ModelSettings(path=str(model_dir), name="bench")])
    settings.server.max_tokens = max(args.gen, 16)
    if args.prefix_cache_mb is not None:
        settings.server.prefix_cache_mb = args.prefix_cache_mb  # type: ignore[attr-defined]  # [server] extra
    provider = MlxProvider(ProviderSettings(name="higgs"),
                           ProviderContext(settings=settings, formats={}, architectures={"llava-qwen2": SPEC}))
    await provider.start()
    # A fresh image per repeat (shared by the pair of runs): no prefix-cache hit turns a prefill into a lookup.
    images = [make_image(args.seed + 1000 + i) for i in range(args.repeats)]
    try:
        for w in range(args.warmup):
            warm = make_image(args.seed + w)
            run_mlx_vlm(model, processor, vlm_prompt, warm, min(args.gen, 8))
            await run_higgs(provider, "bench", question, warm, min(args.gen, 8))

        names = ("mlx-vlm stream_generate", "higgs (MlxProvider)")
        results: dict[str, dict[str, list[float]]] = {name: {"ttft": [], "decode": []} for name in names}
        for rep in range(args.repeats):
            for name in (names if rep % 2 == 0 else tuple(reversed(names))):
                if name == names[1]:
                    ttft, decode_s, n = await run_higgs(provider, "bench", question, images[rep], args.gen)
                else:
                    ttft, decode_s, n = run_mlx_vlm(model, processor, vlm_prompt, images[rep], args.gen)
                if n != args.gen:
                    raise SystemExit(f"{name} produced {n} tokens, expected {args.gen}")
                results[name]["ttft"].append(ttft * 1000)
                results[name]["decode"].append((n - 1) / decode_s if decode_s > 0 else float("nan"))
    finally:
        await provider.close()

    prompt_tokens = len(tokenizer.encode(vlm_prompt.replace("<image>", ""))) + 729
    text, vision = config["hidden_size"], config["vision_config"]
    print(f"model {model_dir.name} (llava-qwen2: text hidden {text}, {config['num_hidden_layers']} layers; "
          f"SigLIP hidden {vision['hidden_size']}, {vision['num_hidden_layers']} layers; {dtype}); "
          f"device {mx.default_device()}; mlx {mx.__version__}, mlx-vlm {mlx_vlm.__version__}")
    print(f"one 384x384 PNG (data URL) + a {args.prompt}-token question (~{prompt_tokens} prompt positions with "
          f"the image), {args.gen} tokens generated, greedy, {args.repeats} runs each (alternating), "
          "median (min..max)\n")
    print(f"{'':26s}  {'TTFT ms':>26s}  {'decode tok/s':>26s}")
    for name, numbers in results.items():
        print(f"{name:26s}  {spread(numbers['ttft']):>26s}  {spread(numbers['decode']):>26s}")
    base, ours = results[names[0]], results[names[1]]
    ttft_ratio = statistics.median(base["ttft"]) / statistics.median(ours["ttft"])
    decode_ratio = statistics.median(ours["decode"]) / statistics.median(base["decode"])
    print(f"\nhiggs vs mlx-vlm: TTFT {ttft_ratio:.2f}x faster, decode {decode_ratio:.2f}x")
    if args.json:
        summary = {"model": model_dir.name, "dtype": dtype, "device": str(mx.default_device()),
                   "prompt": args.prompt, "gen": args.gen, "results": results}
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["nano", "tiny"], default="nano",
                    help="nano: nanoLLaVA-1.5's shapes (default); tiny: a seconds-long smoke run")
    ap.add_argument("--model-dir", help="use this llava-qwen2 MLX model directory instead of a synthetic one")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                    help="float dtype of the synthetic model (default: float32 on the CPU, float16 on a GPU)")
    ap.add_argument("--prompt", type=int, default=50, help="question tokens (besides the image)")
    ap.add_argument("--gen", type=int, default=64, help="generated tokens per run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/higgs-bench"), help="where synthetic models are kept")
    ap.add_argument("--prefix-cache-mb", type=float, help="higgs prefix-cache MiB (0 = off)")
    ap.add_argument("--json", help="also write the numbers to this file")
    return asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
