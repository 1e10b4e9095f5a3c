#!/usr/bin/env python3
"""Summarise a py-spy ``--format raw --threads`` profile (``bench/batching.py --profile``): per thread, the
share of samples and the deepest higgs / mlx-lm / aiohttp frames they were in.

    python bench/profile_summary.py /tmp/higgs-bench-batching/higgs-profile.txt [--top 12]
"""

from __future__ import annotations

import argparse
import collections
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    threads: collections.Counter[str] = collections.Counter()
    frames_by_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    with open(args.profile, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip()
            if not line or " " not in line:
                continue
            stack, count = line.rsplit(" ", 1)
            frames = stack.split(";")
            thread = frames[0].split(": ", 1)[-1] or frames[0]
            ours = [fr for fr in frames[1:] if any(k in fr for k in ("higgs", "mlx_lm", "aiohttp"))]
            threads[thread] += int(count)
            frames_by_thread[thread][(ours or frames)[-1]] += int(count)
    total = sum(threads.values()) or 1
    for thread, n in threads.most_common():
        print(f"== {thread}: {n} samples ({100 * n / total:.0f}% of all)")
        for frame, m in frames_by_thread[thread].most_common(args.top):
            print(f"  {100 * m / n:5.1f}%  {frame[:140]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
