"""Compiled decode steps (``higgs_mlx.compiled``) and the per-model checks that decide batching and compiling."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from higgs.specs import ArchitectureSpec
from mlx_support import engine_greedy

from higgs_mlx import compiled
from higgs_mlx.batching import check_batching
from higgs_mlx.engine import Engine
from higgs_mlx.loader import load_model_dir
from higgs_mlx.testing import TINY_CONFIGS, build_tiny_model

PROMPTS = [[(7 * i + 3) % 300 for i in range(12)], [(5 * i + 11) % 300 for i in range(7)]]


def test_capacity_is_a_multiple_of_64_and_coarser_for_long_contexts():
    assert [compiled.capacity(n) for n in (1, 64, 65, 600, 2047, 2048, 2049, 5000)] == [
        64, 64, 128, 640, 2048, 2048, 2304, 5120]
    for n in range(1, 70_000, 997):  # never less than asked, at most 1/8 (or 63 positions) more
        cap = compiled.capacity(n)
        assert n <= cap <= max(n + 63, n * 9 // 8 + 1)


def test_row_slots_are_powers_of_two_then_multiples_of_eight():
    assert [compiled.slots(n) for n in range(1, 18)] == [1, 2, 4, 4, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16,
                                                        24]
    assert {compiled.slots(n) for n in range(1, 33)} == {1, 2, 4, 8, 16, 24, 32}


def _row(length: int, seed: int, layers: int = 2) -> list[tuple[Any, Any]]:
    key = mx.random.key(seed)
    return [(mx.random.normal((1, 2, length, 4), key=mx.random.split(key, 2)[0]) + layer,
             mx.random.normal((1, 2, length, 4), key=mx.random.split(key, 2)[1]) - layer)
            for layer in range(layers)]


def test_static_cache_right_aligns_rows_and_keeps_them_through_filter_and_growth():
    rows = [_row(5, 1), _row(9, 2), _row(1, 3)]
    cache = compiled.StaticBatchCache.from_rows(rows, headroom=3)
    assert (cache.write, cache.left, cache.capacity) == (9, [4, 0, 8], 64)
    assert cache.keys[0].shape == (4, 2, 64, 4) and (len(cache), cache.slots) == (3, 4)
    assert float(mx.abs(cache.keys[1][0, :, :4]).sum()) == 0  # left padding is zeros
    assert mx.array_equal(cache.keys[1][3], cache.keys[1][0])  # the spare slot repeats row 0
    assert cache.left_array().tolist() == [4, 0, 8, 4]
    for got, want in zip(cache.rows(), rows, strict=True):
        for (gk, gv), (wk, wv) in zip(got, want, strict=True):
            assert mx.array_equal(gk, wk) and mx.array_equal(gv, wv)
    cache.filter([2, 0])
    assert cache.left == [8, 4] and cache.keys[0].shape[0] == 2 and cache.left_array().tolist() == [8, 4]
    assert mx.array_equal(cache.rows()[1][1][0], rows[0][1][0])
    cache.write = cache.capacity  # the next write would not fit: the buffers grow, the content stays
    before = cache.rows()
    cache.ensure_room()
    assert cache.capacity > 64
    for got, want in zip(cache.rows(), before, strict=True):
        assert all(mx.array_equal(g[0], w[0]) for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize(("first", "joining"), [
    ([9, 5], [3, 7]),  # shorter than the write index: nothing moves
    ([5, 2], [9, 1, 4, 6, 8, 3]),  # a longer row: the running rows shift right; 8 rows need 8 slots
    ([60], [30, 62]),  # no room left in 64 positions: rebuilt
])
def test_rows_added_to_a_static_cache_are_the_rows_of_one_built_with_them(first: list[int], joining: list[int]):
    """``add_rows`` copies only the new rows in; the result holds what ``from_rows`` of every row holds."""
    running = [_row(n, seed) for seed, n in enumerate(first)]
    new = [_row(n, 10 + seed) for seed, n in enumerate(joining)]
    cache = compiled.StaticBatchCache.from_rows(running)
    cache.write += 1  # a decode step wrote one position for every row
    stepped = [[(mx.concatenate([k, cache.keys[i][r : r + 1, :, cache.write - 1 : cache.write]], axis=2),
                 mx.concatenate([v, cache.values[i][r : r + 1, :, cache.write - 1 : cache.write]], axis=2))
                for i, (k, v) in enumerate(row)] for r, row in enumerate(running)]
    cache.add_rows(new)
    want = compiled.StaticBatchCache.from_rows([*stepped, *new])
    assert (cache.write, cache.left, cache.slots) == (want.write, want.left, compiled.slots(len(first) + len(joining)))
    assert cache.capacity >= cache.write + 1
    for got_row, want_row in zip(cache.rows(), want.rows(), strict=True):
        for (gk, gv), (wk, wv) in zip(got_row, want_row, strict=True):
            assert mx.array_equal(gk, wk) and mx.array_equal(gv, wv)
    for layer in range(2):  # left padding is zeros, spare slots repeat row 0
        for r, pad in enumerate(cache.left):
            assert float(mx.abs(cache.keys[layer][r, :, :pad]).sum()) == 0
        for spare in range(len(cache), cache.slots):
            assert mx.array_equal(cache.keys[layer][spare], cache.keys[layer][0])


@pytest.mark.parametrize(("first", "group", "keep"), [
    ([], [9, 5, 7], None),  # a group into new buffers
    ([12], [3, 7, 5, 6], [0, 2, 3]),  # beside a running row, one of the group cancelled
    ([5], [9, 30], None),  # longer than the write index: the running row shifts right
    ([60], [30, 62], [1]),  # no room left in 64 positions: rebuilt
])
def test_a_group_joins_as_one_block_with_the_rows_one_by_one_would_give(first: list[int], group: list[int],
                                                                       keep: list[int] | None):
    """Rows prefilled together (mlx-lm's left-padded ``BatchKVCache``) join as one block; the buffers hold
    what joining the rows one by one holds."""
    from mlx_lm.models.cache import KVCache

    caches = []
    for seed, n in enumerate(group):
        layers = []
        for k, v in _row(n, 20 + seed):
            c = KVCache()
            c.update_and_fetch(k, v)
            layers.append(c)
        caches.append(layers)
    batch = [KVCache.merge([c[layer] for c in caches]) for layer in range(2)]
    kept = keep if keep is not None else list(range(len(group)))
    one_by_one = [compiled.rows_from_kv_caches([c.extract(i) for c in batch]) for i in kept]
    block = compiled.RowBlock.of_batch_cache(batch, keep)
    if first:
        running = [_row(n, seed) for seed, n in enumerate(first)]
        cache = compiled.StaticBatchCache.from_rows(running)
        want = compiled.StaticBatchCache.from_rows(running)
        cache.add_blocks([block])
        want.add_rows(one_by_one)
    else:
        cache = compiled.StaticBatchCache.from_blocks([block])
        want = compiled.StaticBatchCache.from_rows(one_by_one)
    assert (cache.write, cache.left, cache.slots, cache.capacity) == (want.write, want.left, want.slots,
                                                                      want.capacity)
    for layer in range(2):
        assert mx.array_equal(cache.keys[layer], want.keys[layer])
        assert mx.array_equal(cache.values[layer], want.values[layer])


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("arch-models")
    return {model_type: build_tiny_model(model_type, root / model_type) for model_type in sorted(TINY_CONFIGS)}


def _load(path: Path) -> Any:
    from mlx_lm import load

    return load(str(path))[0]


def test_which_architectures_batch_and_compile(tiny_models: dict[str, Path]):
    """Every family with plain KV caches batches and compiles, except gemma2: its attention reshapes the
    queries to five dimensions, where mlx-lm's ``(B, 1, 1, S)`` batch mask lands on the heads axis."""
    batching, compiling = {}, {}
    for model_type, path in tiny_models.items():
        model = _load(path)
        plain = compiled.supported(model) is None
        batching[model_type] = check_batching(model, PROMPTS) if plain else "not plain"
        compiling[model_type] = compiled.check(model, PROMPTS, steps=6)
    assert {m for m, r in batching.items() if r} == {"gemma2", "qwen3_next"}
    assert "differ from one-row decoding" in batching["gemma2"]
    assert "ArraysCache" in (compiling["qwen3_next"] or "")
    assert {m for m, r in compiling.items() if r} == {"gemma2", "qwen3_next"}
    # one row alone, the compiled step reproduces even gemma2's eager tokens
    assert compiled.check(_load(tiny_models["gemma2"]), PROMPTS[:1], steps=6) is None


def _mlx_lm_greedy(model: Any, prompt: list[int], n: int) -> list[int]:
    from mlx_lm.generate import generate_step

    return [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=n)]


@pytest.mark.parametrize("model_type", ["gemma2", "qwen3", "deepseek_v2"])
async def test_engine_decodes_like_mlx_lm_batched_and_compiled_where_checked(tiny_models: dict[str, Path],
                                                                           model_type: str):
    """Three requests at once, compiled decode steps on: each equals mlx-lm's own solo generation (gemma2
    because the engine found it must decode it one request at a time)."""
    spec = ArchitectureSpec(name=model_type, model_types=(model_type,), module=f"mlx_lm.models.{model_type}")
    engine = Engine(compiled_decode=True, prefix_cache_bytes=0)
    engine.start()
    try:
        lm = await asyncio.wrap_future(engine.call(lambda: load_model_dir(tiny_models[model_type],
                                                                          {model_type: spec}, name="m")))
        batches, decoder = await asyncio.wrap_future(engine.call(lambda: engine.prepare(lm)))
        assert (batches, decoder is not None) == ((False, False) if model_type == "gemma2" else (True, True))
        prompts = [PROMPTS[0], PROMPTS[1], [(3 * i + 1) % 300 for i in range(30)]]
        got = await engine_greedy(engine, lm, prompts, 10)
        assert got == [_mlx_lm_greedy(lm.model, p, 10) for p in prompts]
        assert engine.peak_batch == (0 if model_type == "gemma2" else 3)
    finally:
        engine.stop()


async def test_a_long_generation_grows_the_compiled_cache_and_stays_exact(tiny_models: dict[str, Path],
                                                                         monkeypatch: pytest.MonkeyPatch):
    """Small buffers: the capacity grows (and the step is traced again) several times in one generation."""
    monkeypatch.setattr(compiled, "CAPACITY_STEP", 16)
    spec = ArchitectureSpec(name="llama", model_types=("llama",), module="mlx_lm.models.llama")
    engine = Engine(compiled_decode=True, prefix_cache_bytes=0)
    engine.start()
    try:
        lm = await asyncio.wrap_future(engine.call(lambda: load_model_dir(tiny_models["llama"], {"llama": spec},
                                                                          name="m")))
        prompts = [PROMPTS[0], PROMPTS[1]]
        got = await engine_greedy(engine, lm, prompts, 60)
        assert got == [_mlx_lm_greedy(lm.model, p, 60) for p in prompts]
        state = engine.state()
        assert state["compiled_decode_models"] == 1
        # /metrics counts every new (mode, slots, capacity) shape: at least three capacities in 60 steps of
        # 16-position buffers, and the host time of their traces
        assert state["compiled_traces"] >= 3 and state["compiled_trace_seconds"] > 0
        assert state["first_tokens"] == 2 and state["first_token_seconds"] > 0
        assert state["prefill_seconds"] > 0 and state["decode_seconds"] > 0
    finally:
        engine.stop()


def test_row_counts_that_share_a_slot_count_share_one_trace(tiny_models: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch):
    """Rows joining and leaving one by one: 5 to 8 rows are one traced shape (8 slots), and a row's result
    does not depend on how many slots around it are spare."""
    traces: list[tuple[int, ...]] = []
    make_step = compiled.CompiledDecoder._make_step

    def counting(self: Any, mode: str) -> Any:
        step = make_step(self, mode)

        def traced(tokens: Any, *rest: Any) -> Any:
            traces.append(tokens.shape)  # the body runs only while mx.compile traces
            return step(tokens, *rest)
        return traced

    monkeypatch.setattr(compiled.CompiledDecoder, "_make_step", counting)
    model = _load(tiny_models["llama"])
    prompts = [[(k * i + 2 * k + 1) % 300 for i in range(20 + k)] for k in range(8)]
    rows = compiled.solo_reference(model, prompts, 1).rows
    decoder = compiled.CompiledDecoder(model)
    firsts = []
    for n in (5, 6, 7, 8):
        cache = compiled.StaticBatchCache.from_rows(rows[:n])
        y, logprobs = decoder(cache, mx.array([(11 * r) % 300 for r in range(n)]), "greedy")
        assert y.shape == (8,) and logprobs.shape[0] == 8
        firsts.append(logprobs[0])
    assert traces == [(8,)]
    for other in firsts[1:]:
        assert mx.allclose(other, firsts[0], atol=1e-5)
