"""Quantized projections fold a batch's rows into one product (``higgs_mlx.row_folding``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_support import ARCHES, engine_greedy

from higgs_mlx.engine import Engine
from higgs_mlx.loader import load_model_dir
from higgs_mlx.row_folding import fold_quantized_rows
from higgs_mlx.testing import build_tiny_model


@pytest.fixture(scope="module")
def quantized_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-bit tiny llama with tied embeddings (its lm_head is the quantized embedding's ``as_linear``)."""
    return build_tiny_model("llama", tmp_path_factory.mktemp("q4") / "m", quantize_bits=4, group_size=32,
                            tie_word_embeddings=True)


def test_folded_layers_compute_the_same_products():
    linear = nn.QuantizedLinear(64, 96, bias=True, group_size=32, bits=4)
    embedding = nn.QuantizedEmbedding(300, 64, group_size=32, bits=4)
    model = nn.Sequential(linear, embedding, nn.Linear(4, 4))
    x = mx.random.normal((5, 1, 64), key=mx.random.key(0))
    before = (linear(x), embedding.as_linear(x), linear(x[0]), embedding(mx.array([[1, 2]])))
    assert fold_quantized_rows(model) == 2
    after = (linear(x), embedding.as_linear(x), linear(x[0]), embedding(mx.array([[1, 2]])))
    for b, a in zip(before, after, strict=True):
        assert a.shape == b.shape and mx.allclose(a, b, atol=1e-5)
    assert isinstance(linear, nn.QuantizedLinear) and type(linear) is not nn.QuantizedLinear
    assert "weight" in linear.parameters() and fold_quantized_rows(model) == 0  # already folded


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
async def test_batched_quantized_model_decodes_like_mlx_lm_alone(quantized_llama: Path, compiled: bool):
    """Three requests decoding together through the folded 4-bit layers give mlx-lm's own solo tokens."""
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    engine = Engine(compiled_decode=compiled, prefix_cache_bytes=0)
    engine.start()
    try:
        lm = await asyncio.wrap_future(engine.call(lambda: load_model_dir(quantized_llama, ARCHES, name="q4")))
        assert type(lm.model.model.layers[0].self_attn.q_proj).__name__ == "RowFoldedQuantizedLinear"
        assert lm.model.args.tie_word_embeddings and not hasattr(lm.model, "lm_head")
        assert type(lm.model.model.embed_tokens).__name__ == "RowFoldedQuantizedEmbedding"
        prompts = [[(7 * i + 3) % 300 for i in range(20)], [(5 * i + 11) % 300 for i in range(9)],
                   [(3 * i + 1) % 300 for i in range(33)]]
        got = await engine_greedy(engine, lm, prompts, 12)
        assert engine.peak_batch == 3
    finally:
        engine.stop()
    reference = load(str(quantized_llama))[0]
    assert type(reference.model.layers[0].self_attn.q_proj) is nn.QuantizedLinear
    if mx.default_device() == mx.cpu:  # load_model_dir casts to float32 there; so does the reference here
        from higgs_mlx.loader import cast_float_params

        cast_float_params(reference, mx.float32)
    want = [[int(t) for t, _ in generate_step(mx.array(p), reference, max_tokens=12)] for p in prompts]
    assert got == want
