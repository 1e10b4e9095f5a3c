"""Prefill calls padded to a few widths, so prompts of nearby lengths share one set of shapes.

Why: on CUDA, MLX prefills attention with cuDNN and builds (and caches) one cuDNN graph per shape of the
call: rows, query positions, key positions, mask. Every prompt has its own length, and a burst of prompts
prefilled together has its own row count and padded width, so without padding most prefill calls meet a
shape for the first time and pay for building its graph. ``width()`` rounds a call's token count up
(multiples of 64, of 256 beyond 1024 tokens) and a group's row count is padded to the compiled steps'
``compiled.slots`` (powers of two, then multiples of 8), at the price of computing the padded positions.

How the padding stays invisible: one prompt's chunk is padded at its end with copies of its last token;
causal attention keeps the real positions from seeing them, and the cache is trimmed back by the padded
count, so the next write overwrites them. A group's rows are right-padded to the width (what
``prefill_group`` does anyway), spare rows repeat the first row's prompt and are dropped from the cache
after the prefill. Only models whose cache layers are all plain ``KVCache`` are padded: sliding windows
would lose real positions to the padding and SSM states cannot be trimmed.
"""

from __future__ import annotations

from typing import Any


def width(n: int) -> int:
    """Padded token count of a prefill call of ``n`` tokens."""
    step = 64 if n <= 1024 else 256
    return -(-n // step) * step


def paddable(cache: list[Any]) -> bool:
    """Whether a cache's layers can hold padded positions (all plain ``KVCache``, trimmable)."""
    from mlx_lm.models.cache import KVCache

    return bool(cache) and all(type(c) is KVCache for c in cache)
