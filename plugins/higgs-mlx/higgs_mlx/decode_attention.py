"""A fused decode-attention kernel for the compiled step's fixed-capacity cache (MLX's CUDA backend).

Why: the compiled step (``higgs_mlx.compiled``) keeps every row's keys and values in buffers of a fixed
capacity, so its attention needs a mask, and MLX's CUDA ``scaled_dot_product_attention`` has no fused
kernel for an array mask at one query token: it falls back to five unfused kernels per layer (scores,
mask, softmax, weighted sum, casts) over every buffer position, valid or not. This kernel takes the rows'
valid ranges instead of a mask (row ``b`` attends to positions ``[left[b], write]``) and reads only those.

How: one thread block per (row, query head); each group of ``G`` lanes takes one key at a time (8 elements
per lane, 16-byte loads), keeps an online softmax (running max, sum, weighted values) in float32, and the
groups' partial results are merged through shared memory at the end. Grouped-query heads share their KV
head's buffers. Arithmetic is float32 throughout, like MLX's own fused decode kernel.

Where: CUDA only (``available()``), float16 and bfloat16, equal key and value head sizes that are a
multiple of 8 up to 256 (the Llama, Qwen, Mistral, Phi-3 and Starcoder2 shapes). Anything else keeps the
masked attention; so does the CPU backend (no kernel), and Metal, whose fused kernel takes masks.

mlx is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import struct
from functools import cache
from typing import Any

#: Threads per block: enough groups in flight to hide the loads' latency at short and long contexts.
THREADS = 256

_HEADER = """
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float higgs_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float higgs_to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ void higgs_store(__nv_bfloat16* p, float x) { *p = __float2bfloat16(x); }
__device__ __forceinline__ void higgs_store(__half* p, float x) { *p = __float2half(x); }
"""

# Template constants: T (the element type), D (head size), HQ / HKV (query / KV heads), G (lanes per key),
# E (elements per lane), SLOTS (key groups per block), SCALE_BITS (the softmax scale's float bits); the
# buffers' capacity is read at run time (``k_shape[2]``), so one kernel serves every capacity.
# Inputs: q (B, HQ, 1, D), k / v (B, HKV, capacity, D), left (B,), write (1,).
_SOURCE = """
    constexpr int GROUP_HEADS = HQ / HKV;
    const float scale = __int_as_float(SCALE_BITS);
    const int head = blockIdx.y;
    const int row = blockIdx.z;
    const int kv_head = head / GROUP_HEADS;
    const int slot = threadIdx.x / G;
    const int lane = threadIdx.x % G;

    __shared__ float slot_max[SLOTS];
    __shared__ float slot_sum[SLOTS];
    __shared__ float slot_acc[SLOTS][D];

    const T* q_row = q + ((size_t)row * HQ + head) * D + lane * E;
    float query[E];
#pragma unroll
    for (int e = 0; e < E; ++e) {
        query[e] = higgs_to_float(q_row[e]) * scale;
    }
    const size_t base = ((size_t)row * HKV + kv_head) * k_shape[2] * D + lane * E;
    const int first = left[row];
    const int last = write[0];

    float running_max = -__int_as_float(0x7f800000);
    float running_sum = 0.0f;
    float acc[E];
#pragma unroll
    for (int e = 0; e < E; ++e) {
        acc[e] = 0.0f;
    }
    T key[E];
    T value[E];
    // Every lane runs the same number of iterations (the shuffles need the whole warp); a slot past
    // ``last`` computes on zeros and keeps its state.
    for (int pos0 = first; pos0 <= last; pos0 += SLOTS) {
        const int pos = pos0 + slot;
        const bool valid = pos <= last;
        const size_t at = base + (size_t)(valid ? pos : first) * D;
        if constexpr (E % 8 == 0) {
#pragma unroll
            for (int c = 0; c < E / 8; ++c) {
                reinterpret_cast<uint4*>(key)[c] = reinterpret_cast<const uint4*>(k + at)[c];
                reinterpret_cast<uint4*>(value)[c] = reinterpret_cast<const uint4*>(v + at)[c];
            }
        } else {
#pragma unroll
            for (int e = 0; e < E; ++e) {
                key[e] = k[at + e];
                value[e] = v[at + e];
            }
        }
        float score = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            score += query[e] * higgs_to_float(key[e]);
        }
#pragma unroll
        for (int offset = G / 2; offset > 0; offset /= 2) {
            score += __shfl_xor_sync(0xffffffff, score, offset, G);
        }
        if (valid) {
            const float new_max = fmaxf(running_max, score);
            const float keep = __expf(running_max - new_max);
            const float weight = __expf(score - new_max);
            running_sum = running_sum * keep + weight;
#pragma unroll
            for (int e = 0; e < E; ++e) {
                acc[e] = acc[e] * keep + weight * higgs_to_float(value[e]);
            }
            running_max = new_max;
        }
    }

    if (lane == 0) {
        slot_max[slot] = running_max;
        slot_sum[slot] = running_sum;
    }
#pragma unroll
    for (int e = 0; e < E; ++e) {
        slot_acc[slot][lane * E + e] = acc[e];
    }
    __syncthreads();

    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float top = -__int_as_float(0x7f800000);
        for (int s = 0; s < SLOTS; ++s) {
            top = fmaxf(top, slot_max[s]);
        }
        float total = 0.0f;
        float sum = 0.0f;
        for (int s = 0; s < SLOTS; ++s) {
            const float factor = slot_sum[s] > 0.0f ? __expf(slot_max[s] - top) : 0.0f;
            total += slot_sum[s] * factor;
            sum += slot_acc[s][d] * factor;
        }
        higgs_store(out + ((size_t)row * HQ + head) * D + d, sum / total);
    }
"""


def available() -> bool:
    """Whether this MLX runs on CUDA and can build custom kernels."""
    import mlx.core as mx

    return bool(getattr(mx, "cuda", None) and mx.cuda.is_available() and hasattr(mx.fast, "cuda_kernel"))


def lanes(head_dim: int) -> tuple[int, int] | None:
    """``(lanes per key, elements per lane)`` for a head size, or None when the kernel does not take it."""
    if head_dim % 8 or head_dim > 256:
        return None
    group = head_dim // 8
    if group & (group - 1) == 0:  # a power of two: 8 elements (16 bytes) per lane
        return group, 8
    if head_dim % 32 == 0:  # e.g. 96: 32 lanes of 3 elements
        return 32, head_dim // 32
    return None


def supports(queries: Any, keys: Any, values: Any) -> bool:
    """Whether the kernel computes this attention (one query token, shapes and dtypes it was written for)."""
    import mlx.core as mx

    if queries.ndim != 4 or queries.shape[2] != 1 or keys.shape[-1] != values.shape[-1]:
        return False
    if queries.dtype not in (mx.float16, mx.bfloat16) or keys.dtype != queries.dtype or values.dtype != queries.dtype:
        return False
    heads, kv_heads = queries.shape[1], keys.shape[1]
    return heads % kv_heads == 0 and queries.shape[-1] == keys.shape[-1] and lanes(keys.shape[-1]) is not None


@cache
def _kernel() -> Any:
    import mlx.core as mx

    return mx.fast.cuda_kernel(name="higgs_decode_attention", input_names=["q", "k", "v", "left", "write"],
                               output_names=["out"], source=_SOURCE, header=_HEADER)


def attention(queries: Any, keys: Any, values: Any, left: Any, write: Any, scale: float) -> Any:
    """Attention of one query token per row over the positions ``[left[b], write]`` of ``keys`` / ``values``
    (``(B, kv heads, capacity, D)``); ``queries`` is ``(B, heads, 1, D)``, ``left`` ``(B,)`` and ``write``
    ``(1,)`` int32. Check ``supports()`` first."""
    import mlx.core as mx

    rows, heads, _, dim = queries.shape
    kv_heads = keys.shape[1]
    group = lanes(dim)
    assert group is not None, "check supports() first"
    g, e = group
    (scale_bits,) = struct.unpack("<i", struct.pack("<f", float(scale)))
    template = [("T", queries.dtype), ("D", dim), ("HQ", heads), ("HKV", kv_heads), ("G", g),
                ("E", e), ("SLOTS", THREADS // g), ("SCALE_BITS", scale_bits)]
    return _kernel()(inputs=[queries, keys, values, left.astype(mx.int32), write.astype(mx.int32)],
                     template=template, grid=(THREADS, heads, rows), threadgroup=(THREADS, 1, 1),
                     output_shapes=[queries.shape], output_dtypes=[queries.dtype])[0]


def reference(queries: Any, keys: Any, values: Any, left: Any, write: Any, scale: float) -> Any:
    """The same attention with MLX's masked ``scaled_dot_product_attention`` (for tests and benchmarks)."""
    import mlx.core as mx

    positions = mx.arange(keys.shape[2])
    mask = ((positions[None] >= left[:, None]) & (positions[None] <= write[0]))[:, None, None, :]
    return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)

