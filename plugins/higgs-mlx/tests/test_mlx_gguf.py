"""GGUF import: tensors round-trip against gguf-py's dequantization, and an imported model generates exactly
what the original generates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlx_support import ARCHES, write_gguf

from higgs_mlx.gguf_import import GGUFImportError, import_gguf, mlx_name

GGML = pytest.importorskip("gguf").GGMLQuantizationType

def greedy(model_dir: Path, prompt: list[int], n: int = 16) -> list[int]:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, _ = load(str(model_dir))
    return [t for t, _ in generate_step(mx.array(prompt), model, max_tokens=n)]


def test_float32_import_generates_exactly_like_the_original(tiny_llama, tmp_path):
    """Names, the rotary un-permutation, config and tokenizer are right: same tokens, same encodings."""
    from transformers import AutoTokenizer

    src = tmp_path / "tiny.gguf"
    write_gguf(tiny_llama, src, lambda name: GGML.F32)
    dest = import_gguf(src, tmp_path / "imported")
    prompt = [5, 77, 120, 33, 250, 9]
    assert greedy(dest, prompt) == greedy(tiny_llama, prompt)

    original, imported = AutoTokenizer.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(dest)
    for text in ["hello world", "<|im_start|>user\nbad tokens?!<|im_end|>", "  spaces\n\nand é ünï"]:
        assert imported.encode(text) == original.encode(text)
    assert imported.chat_template == original.chat_template
    assert imported.eos_token == "<|im_end|>"


def test_quantized_tensors_round_trip_against_dequantized_originals(tiny_llama, tmp_path):
    import mlx.core as mx
    from gguf import quants

    kinds = {"q_proj": GGML.Q4_0, "k_proj": GGML.Q4_1, "v_proj": GGML.Q8_0, "o_proj": GGML.F16,
             "gate_proj": GGML.Q4_1, "up_proj": GGML.Q4_0, "down_proj": GGML.Q8_0, "embed_tokens": GGML.Q8_0}

    def qtype_for(name):
        return next((q for key, q in kinds.items() if key in name), GGML.F32)

    src = tmp_path / "mixed.gguf"
    stored = write_gguf(tiny_llama, src, qtype_for)
    dest = import_gguf(src, tmp_path / "mixed")
    config = json.loads((dest / "config.json").read_text())
    arrays = mx.load(str(dest / "model.safetensors"))
    quant = config["quantization"]
    seen = set()
    for name, (qtype, data) in stored.items():
        module = name.rsplit(".", 1)[0]
        shape = np.array(mx.load(str(tiny_llama / "model.safetensors"))[name]).shape
        reference = data.astype(np.float32) if qtype in (GGML.F32, GGML.F16) else quants.dequantize(data, qtype)
        reference = reference.reshape(shape)
        if name.endswith(("q_proj.weight", "k_proj.weight")):  # undo the permutation we applied
            n_head = config["num_attention_heads"] if "q_proj" in name else config["num_key_value_heads"]
            d = shape[0] // n_head // 2
            reference = reference.reshape(n_head, d, 2, -1).swapaxes(1, 2).reshape(shape)
        if f"{module}.scales" in arrays:
            q = quant.get(module, quant)
            # In float32, as the CPU backend runs it (higgs casts scales and biases to float32 at load).
            got = mx.dequantize(arrays[name], arrays[f"{module}.scales"].astype(mx.float32),
                                arrays[f"{module}.biases"].astype(mx.float32),
                                group_size=q["group_size"], bits=q["bits"])
            assert q["bits"] == (8 if qtype == GGML.Q8_0 else 4), name
        else:
            got = arrays[name]
        np.testing.assert_allclose(np.array(got.astype(mx.float32)), reference, rtol=0, atol=1e-6, err_msg=name)
        seen.add(qtype)
    assert seen >= {GGML.F32, GGML.F16, GGML.Q8_0, GGML.Q4_0, GGML.Q4_1}

    # The imported mixed-precision model loads through higgs's loader and generates.
    from higgs_mlx.loader import load_model_dir

    lm = load_model_dir(dest, ARCHES, name="mixed")
    assert lm.tokenizer.decode(lm.tokenizer.encode("hello")) == "hello"


@pytest.mark.parametrize("bits", [4, 8])
def test_requantize_option(tiny_llama, tmp_path, bits):
    import mlx.core as mx

    src = tmp_path / "f16.gguf"
    write_gguf(tiny_llama, src, lambda name: GGML.F16)
    dest = import_gguf(src, tmp_path / f"q{bits}", bits=bits)
    config = json.loads((dest / "config.json").read_text())
    assert config["quantization"]["bits"] == bits and config["quantization"]["group_size"] == 64
    arrays = mx.load(str(dest / "model.safetensors"))
    original = mx.load(str(tiny_llama / "model.safetensors"))
    w = mx.dequantize(arrays["model.layers.0.mlp.up_proj.weight"], arrays["model.layers.0.mlp.up_proj.scales"],
                      arrays["model.layers.0.mlp.up_proj.biases"], group_size=64, bits=bits)
    err = float(mx.abs(w - original["model.layers.0.mlp.up_proj.weight"]).max())
    scale = float(mx.abs(original["model.layers.0.mlp.up_proj.weight"]).max())
    assert err < scale * (0.15 if bits == 4 else 0.01)


def test_unsupported_and_broken_files(tmp_path):
    import gguf

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(GGUFImportError, match="not a readable GGUF"):
        import_gguf(bad, tmp_path / "out")
    other = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(str(other), "bert")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFImportError, match="architecture 'bert' is not supported"):
        import_gguf(other, tmp_path / "out")
    with pytest.raises(GGUFImportError, match="does not exist"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    with pytest.raises(GGUFImportError, match="is a directory"):  # regression: said "does not exist"
        import_gguf(tmp_path, tmp_path / "out")
    with pytest.raises(GGUFImportError):
        mlx_name("blk.0.weird_thing.weight")


def test_llama3_rope_freqs_become_rope_scaling(tmp_path):
    """Llama 3.1-style files: rope_freqs is turned back into rope_scaling, and generation matches exactly."""
    from higgs_mlx.testing import build_tiny_model

    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    original = build_tiny_model("llama", tmp_path / "llama31", seed=5, rope_scaling=scaling)
    src = tmp_path / "llama31.gguf"
    write_gguf(original, src, lambda name: GGML.F32)
    dest = import_gguf(src, tmp_path / "imported31")
    assert json.loads((dest / "config.json").read_text())["rope_scaling"] == scaling
    prompt = list(range(40, 140))
    assert greedy(dest, prompt) == greedy(original, prompt)


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K", "Q5_K"])
def test_kquants_are_requantized_to_8_bit(tmp_path, kind):
    """k-quant tensors (Q4_K_M files mix Q4_K and Q6_K) are dequantized and stored as 8-bit affine."""
    import mlx.core as mx
    from gguf import quants

    from higgs_mlx.testing import build_tiny_model

    qtype = GGML[kind]
    original = build_tiny_model("llama", tmp_path / "wide", seed=6, hidden_size=256, intermediate_size=512,
                                head_dim=64)
    src = tmp_path / f"{kind}.gguf"
    stored = write_gguf(original, src, lambda name: qtype if "mlp." in name or "self_attn.v" in name else GGML.F32)
    dest = import_gguf(src, tmp_path / f"imported-{kind}")
    arrays = mx.load(str(dest / "model.safetensors"))
    quant = json.loads((dest / "config.json").read_text())["quantization"]
    checked = 0
    for name, (stored_type, data) in stored.items():
        if stored_type != qtype:
            continue
        module = name.rsplit(".", 1)[0]
        q = quant.get(module, quant)
        assert (q["bits"], q["group_size"]) == (8, 32)
        got = np.array(mx.dequantize(arrays[name], arrays[f"{module}.scales"].astype(mx.float32),
                                     arrays[f"{module}.biases"].astype(mx.float32), group_size=32, bits=8))
        reference = quants.dequantize(data, qtype).reshape(got.shape)
        span = np.abs(reference).max()
        assert np.abs(got - reference).max() <= span / 100, name  # 8-bit affine error, well under k-quant's own
        checked += 1
    assert checked >= 5
    from higgs_mlx.loader import load_model_dir

    lm = load_model_dir(dest, ARCHES, name=kind)
    assert lm.config["quantization"]["bits"] == 8
