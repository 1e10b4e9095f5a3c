#!/usr/bin/env python3
"""Decode attention on MLX's CUDA backend: higgs's fused kernel against MLX's attention, side by side.

For each shape (rows, query heads, KV heads, head size, positions) three ways of attending one query token
per row over a KV buffer are timed inside one compiled function of ``--layers`` chained calls (as in a
decode step, where each layer's attention is one small kernel among many):

- **kernel**: ``higgs_mlx.decode_attention`` over a fixed-capacity buffer, valid ranges as arrays;
- **masked**: MLX's ``scaled_dot_product_attention`` over the same buffer with an array mask (what a
  compiled step runs without the kernel: MLX's unfused fallback on CUDA);
- **fused, sliced**: MLX's fused decode kernel over exactly the valid positions, no mask (what mlx-lm's
  eager single-stream step runs; it cannot live in a fixed-shape compiled step).

Run on a GPU: ``python bench/decode_attention.py``. Prints µs per attention call (median of ``--repeats``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugins" / "higgs-mlx"))


def measure(rows: int, heads: int, kv_heads: int, dim: int, n: int, layers: int, repeats: int
            ) -> tuple[dict[str, float], float]:
    """µs per call of each way for one shape, and the kernel's largest difference from the masked way."""
    import mlx.core as mx  # noqa: TID251 (bench measures mlx directly)
    from higgs_mlx import decode_attention
    from higgs_mlx.compiled import capacity

    cap = capacity(n + 1)
    key = mx.random.key(n + rows)
    q = mx.random.normal((rows, heads, 1, dim), key=key).astype(mx.bfloat16)
    k = mx.random.normal((rows, kv_heads, cap, dim), key=mx.random.split(key)[0]).astype(mx.bfloat16)
    v = mx.random.normal((rows, kv_heads, cap, dim), key=mx.random.split(key)[1]).astype(mx.bfloat16)
    left = mx.array([(r * 7) % 5 for r in range(rows)], dtype=mx.int32)
    write = mx.array([n - 1], dtype=mx.int32)
    scale = 1 / math.sqrt(dim)
    ks, vs = k[:, :, :n], v[:, :, :n]
    mx.eval(q, k, v, ks, vs)

    def chain(attend):  # each call's output is the next call's query
        def run(q, *rest):
            for _ in range(layers):
                q = attend(q, *rest)
            return q
        return mx.compile(run)

    ways = {
        "kernel": (chain(lambda q, k, v, lo, w: decode_attention.attention(q, k, v, lo, w, scale)),
                   (q, k, v, left, write)),
        "masked": (chain(lambda q, k, v, lo, w: decode_attention.reference(q, k, v, lo, w, scale)),
                   (q, k, v, left, write)),
        "fused": (chain(lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)), (q, ks, vs)),
    }
    times = {}
    for name, (fn, inputs) in ways.items():
        mx.eval(fn(*inputs))
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            mx.eval(fn(*inputs))
            samples.append((time.perf_counter() - start) / layers * 1e6)
        times[name] = statistics.median(samples)
    got = decode_attention.attention(q, k, v, left, write, scale).astype(mx.float32)
    want = decode_attention.reference(q.astype(mx.float32), k.astype(mx.float32), v.astype(mx.float32),
                                      left, write, scale)
    return times, mx.abs(got - want).max().item()


def main() -> int:
    import mlx.core as mx  # noqa: TID251 (bench measures mlx directly)
    from higgs_mlx import decode_attention
    from higgs_mlx.compiled import capacity

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    if not decode_attention.available():
        print("needs MLX's CUDA backend")
        return 1
    shapes = [  # rows, heads, kv heads, dim, valid positions (capacity: the compiled step's rounding)
        (1, 32, 8, 64, 640), (1, 32, 8, 64, 4096), (8, 32, 8, 64, 200), (8, 32, 8, 64, 1024),
        (16, 32, 8, 64, 200), (32, 32, 8, 64, 200), (1, 16, 8, 128, 640), (8, 16, 8, 128, 200),
    ]
    print(f"{mx.__version__=} {mx.default_device()}; µs per call, {args.layers} chained calls per eval\n")
    print(f"{'rows':>4} {'heads':>5} {'kv':>3} {'dim':>4} {'positions':>9} {'cap':>5} | {'kernel':>8} "
          f"{'masked':>8} {'fused, sliced':>13} | {'max |kernel - masked|':>21}")
    for rows, heads, kv_heads, dim, n in shapes:
        times, error = measure(rows, heads, kv_heads, dim, n, args.layers, args.repeats)
        print(f"{rows:>4} {heads:>5} {kv_heads:>3} {dim:>4} {n:>9} {capacity(n + 1):>5} | {times['kernel']:8.1f} "
              f"{times['masked']:8.1f} {times['fused']:13.1f} | {error:21.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
