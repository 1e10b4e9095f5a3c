"""The fused decode-attention kernel (``higgs_mlx.decode_attention``) and how compiled steps use it.

The kernel runs on MLX's CUDA backend only: the tests marked ``cuda`` compare it with MLX's masked
attention there (``bench/gpu.sh kernel-tests``); the rest run everywhere and cover the shapes it takes and
the dispatch that falls back to the masked attention.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest

from higgs_mlx import compiled, decode_attention
from higgs_mlx.testing import build_tiny_model

cuda = pytest.mark.skipif(not decode_attention.available(), reason="the kernel needs MLX's CUDA backend")


def test_head_sizes_the_kernel_takes():
    assert decode_attention.lanes(64) == (8, 8)
    assert decode_attention.lanes(128) == (16, 8)
    assert decode_attention.lanes(256) == (32, 8)
    assert decode_attention.lanes(96) == (32, 3)  # Phi-3: 32 lanes of 3 elements
    assert [decode_attention.lanes(d) for d in (80, 100, 320, 12)] == [None, None, None, None]


def test_supports_one_half_precision_query_token_with_grouped_heads():
    def arrays(q_len: int = 1, heads: int = 8, kv_heads: int = 2, dim: int = 64, dtype: Any = mx.bfloat16,
               v_dim: int | None = None) -> tuple[Any, Any, Any]:
        return (mx.zeros((2, heads, q_len, dim), dtype), mx.zeros((2, kv_heads, 64, dim), dtype),
                mx.zeros((2, kv_heads, 64, v_dim or dim), dtype))

    assert decode_attention.supports(*arrays())
    assert decode_attention.supports(*arrays(dtype=mx.float16, heads=2))
    assert not decode_attention.supports(*arrays(q_len=2))
    assert not decode_attention.supports(*arrays(dtype=mx.float32))
    assert not decode_attention.supports(*arrays(heads=6, kv_heads=4))
    assert not decode_attention.supports(*arrays(v_dim=32))  # MLA-style key and value sizes
    assert not decode_attention.supports(*arrays(dim=80))


def _case(rows: int, heads: int, kv_heads: int, dim: int, cap: int, write: int, left: list[int],
          dtype: Any, seed: int) -> tuple[Any, ...]:
    key = mx.random.key(seed)
    kq, kk, kv = mx.random.split(key, 3)
    q = mx.random.normal((rows, heads, 1, dim), key=kq).astype(dtype)
    k = mx.random.normal((rows, kv_heads, cap, dim), key=kk).astype(dtype) * 2
    v = mx.random.normal((rows, kv_heads, cap, dim), key=kv).astype(dtype)
    return q, k, v, mx.array(left, dtype=mx.int32), mx.array([write], dtype=mx.int32), 1 / math.sqrt(dim)


@cuda
@pytest.mark.parametrize(("rows", "heads", "kv_heads", "dim", "cap", "write", "left"), [
    (1, 32, 8, 64, 64, 0, [0]),  # one position
    (1, 32, 8, 64, 640, 600, [0]),
    (3, 32, 8, 64, 2048, 1500, [0, 700, 1499]),
    (2, 16, 8, 128, 4096, 4095, [3, 0]),  # Qwen3 shape, full buffer
    (4, 8, 8, 96, 256, 200, [0, 1, 100, 200]),  # Phi-3 head size (no GQA)
    (2, 8, 4, 256, 512, 300, [17, 0]),
])
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
def test_kernel_matches_masked_attention(rows: int, heads: int, kv_heads: int, dim: int, cap: int, write: int,
                                         left: list[int], dtype: Any):
    q, k, v, lefts, writes, scale = _case(rows, heads, kv_heads, dim, cap, write, left, dtype, rows + dim)
    got = decode_attention.attention(q, k, v, lefts, writes, scale).astype(mx.float32)
    want = decode_attention.reference(q.astype(mx.float32), k.astype(mx.float32), v.astype(mx.float32),
                                      lefts, writes, scale)
    assert got.shape == q.shape
    assert mx.abs(got - want).max().item() < 2e-2  # half-precision output of float32 arithmetic


@cuda
def test_kernel_traces_inside_compile_and_reads_the_write_index_at_run_time():
    q, k, v, lefts, _, scale = _case(2, 8, 2, 64, 256, 0, [0, 5], mx.bfloat16, 3)
    step = mx.compile(lambda q, k, v, left, write: decode_attention.attention(q, k, v, left, write, scale))
    for write in (9, 100, 255):
        writes = mx.array([write], dtype=mx.int32)
        got = step(q, k, v, lefts, writes).astype(mx.float32)
        want = decode_attention.reference(q.astype(mx.float32), k.astype(mx.float32), v.astype(mx.float32),
                                          lefts, writes, scale)
        assert mx.abs(got - want).max().item() < 2e-2


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mlx_lm import load

    return load(str(build_tiny_model("llama", tmp_path_factory.mktemp("llama") / "m")))[0]


PROMPTS = [[(7 * i + 3) % 300 for i in range(70)], [(5 * i + 11) % 300 for i in range(37)]]


def test_compiled_steps_route_attention_through_the_kernel_where_it_applies(llama: Any,
                                                                             monkeypatch: pytest.MonkeyPatch):
    """With the kernel replaced by the masked attention it stands for (the CPU has no kernel), a compiled
    step that attends through the dispatch reproduces one-row decoding; the kernel is called per layer."""
    calls = []

    def masked(*args: Any) -> Any:
        calls.append(args[0].shape)
        return decode_attention.reference(*args)

    monkeypatch.setattr(decode_attention, "attention", masked)
    monkeypatch.setattr(decode_attention, "supports", lambda q, k, v: q.shape[2] == 1)
    decoder, reason = compiled.checked_decoder(llama, PROMPTS, steps=4, attention_kernel=True)
    assert reason is None and decoder is not None and decoder.attention_kernel
    assert decoder.kernel_layers == len(llama.layers)
    assert calls and all(shape[0] == 2 and shape[2] == 1 for shape in calls)
    # other caches (eager prefill and decoding) keep mlx-lm's own attention
    calls.clear()
    from mlx_lm.models.cache import make_prompt_cache

    llama(mx.array(PROMPTS[0])[None], cache=make_prompt_cache(llama))
    assert calls == []


@pytest.mark.skipif(decode_attention.available(), reason="on CUDA the kernel runs")
def test_without_a_kernel_the_engine_falls_back_to_masked_compiled_steps(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture):
    """Asked for the kernel where it cannot run (no CUDA; a float32 model), the model still gets compiled
    steps, with the masked attention."""
    from higgs.specs import ArchitectureSpec

    from higgs_mlx.engine import Engine
    from higgs_mlx.loader import load_model_dir

    path = build_tiny_model("qwen3", tmp_path / "m")
    arch = ArchitectureSpec(name="qwen3", model_types=("qwen3",), module="mlx_lm.models.qwen3")
    engine = Engine(compiled_decode=True, attention_kernel=True, prefix_cache_bytes=0)
    lm = load_model_dir(path, {"qwen3": arch}, name="tiny")
    batches, decoder = engine.prepare(lm)
    assert batches and decoder is not None and not decoder.attention_kernel
    assert "attend without the fused kernel" in caplog.text and "decode-attention kernel takes none" in caplog.text
    assert engine.state()["attention_kernel_models"] == 0 and engine.state()["compiled_decode_models"] == 1
    # off by default: no kernel check, no warning
    caplog.clear()
    lm = load_model_dir(path, {"qwen3": arch}, name="tiny2")
    assert Engine(compiled_decode=True, prefix_cache_bytes=0).prepare(lm)[1] is not None
    assert "fused kernel" not in caplog.text


def test_the_engine_uses_the_kernel_by_default_where_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture):
    """``attention_kernel`` unset: compiled steps take the kernel where ``available()`` says it runs (here the
    masked attention stands in for it); set to false, they keep the masked attention."""
    from higgs.specs import ArchitectureSpec

    from higgs_mlx.engine import Engine
    from higgs_mlx.loader import load_model_dir

    monkeypatch.setattr(decode_attention, "available", lambda: True)
    monkeypatch.setattr(decode_attention, "attention", decode_attention.reference)
    monkeypatch.setattr(decode_attention, "supports", lambda q, k, v: q.shape[2] == 1)
    path = build_tiny_model("llama", tmp_path / "m")
    arch = ArchitectureSpec(name="llama", model_types=("llama",), module="mlx_lm.models.llama")
    engine = Engine(compiled_decode=True, prefix_cache_bytes=0)
    decoder = engine.prepare(load_model_dir(path, {"llama": arch}, name="tiny"))[1]
    assert decoder is not None and decoder.attention_kernel
    assert engine.state()["attention_kernel_models"] == 1
    engine = Engine(compiled_decode=True, attention_kernel=False, prefix_cache_bytes=0)
    decoder = engine.prepare(load_model_dir(path, {"llama": arch}, name="tiny2"))[1]
    assert decoder is not None and not decoder.attention_kernel
    assert "fused kernel" not in caplog.text
