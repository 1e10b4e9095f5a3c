#!/usr/bin/env python3
"""A batch of decoding rows through a 4-bit projection: ``(B, 1, K)`` (mlx-lm's batched step) against the
same rows folded into one ``(B, K)`` product (``higgs_mlx.row_folding``), side by side.

The shapes are the Llama-3.2-1B projections (q, MLP up/down and the tied 128k-vocabulary head). Each way is
timed as ``--chain`` dependent products per eval (as in a decode step); µs per product, median of
``--repeats``. Run on any backend: ``python bench/row_folding.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def measure(rows: int, k: int, n: int, shape: tuple[int, ...], weights: tuple, dtype, chain: int,
            repeats: int) -> float:
    """µs per product of ``rows`` rows fed as ``shape``."""
    import mlx.core as mx  # noqa: TID251 (bench measures mlx directly)

    wq, scales, biases = weights
    x = mx.random.normal((rows, 1, k), key=mx.random.key(rows)).astype(dtype)

    def run(x):
        out = x
        for _ in range(chain):  # each product's input depends on the last product
            y = mx.quantized_matmul(out.reshape(shape), wq, scales, biases, transpose=True, group_size=64, bits=4)
            out = x + y.reshape(rows, 1, n)[..., :1] * 1e-6
        return out

    fn = mx.compile(run)
    mx.eval(fn(x))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(fn(x))
        samples.append((time.perf_counter() - start) / chain * 1e6)
    return statistics.median(samples)


def main() -> int:
    import mlx.core as mx  # noqa: TID251 (bench measures mlx directly)

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,2,4,8,16,32")
    ap.add_argument("--chain", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    dtype = mx.float32 if mx.default_device() == mx.cpu else mx.bfloat16
    shapes = {"q_proj 2048->2048": (2048, 2048), "up 2048->8192": (2048, 8192), "down 8192->2048": (8192, 2048),
              "lm_head 2048->128256": (2048, 128256)}
    print(f"mlx {mx.__version__}, {mx.default_device()}, {dtype}; µs per product ({args.chain} chained per eval)\n")
    print(f"{'projection':<22} {'rows':>4} | {'(B, 1, K)':>10} {'(B, K)':>10} | {'speed-up':>8}")
    for name, (k, n) in shapes.items():
        w = mx.random.normal((n, k), key=mx.random.key(k + n)).astype(dtype) * 0.02
        wq, scales, biases = mx.quantize(w, group_size=64, bits=4)
        mx.eval(wq, scales, biases)
        for rows in (int(r) for r in args.rows.split(",")):
            times = [measure(rows, k, n, shape, (wq, scales, biases), dtype, args.chain, args.repeats)
                     for shape in ((rows, 1, k), (rows, k))]
            print(f"{name:<22} {rows:>4} | {times[0]:10.1f} {times[1]:10.1f} | {times[0] / times[1]:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
