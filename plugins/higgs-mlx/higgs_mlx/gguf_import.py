"""Importing GGUF files (llama.cpp / Ollama) into MLX model directories.

What is converted:
- tensors of llama-family files (``general.architecture == "llama"``, which includes Mistral-style files),
  renamed from llama.cpp's scheme to mlx-lm's, with llama.cpp's rotary row permutation of ``attn_q`` /
  ``attn_k`` undone;
- Q4_0, Q4_1 and Q8_0 blocks are *re-packed*, not re-quantized: each 32-value block is exactly an MLX
  affine group of 32 (Q4_1: ``w = d*q + m``; Q4_0: ``w = d*(q-8)``; Q8_0: ``w = d*q`` with ``q+128``
  stored unsigned), so the MLX model computes the same weights as llama.cpp;
- F32 / F16 / BF16 stay floating point; every other type gguf-py can dequantize (Q5_0, Q5_1 and the
  k-quants Q2_K..Q6_K, among others) is dequantized and re-quantized to 8-bit affine (group 32);
- ``-q 4`` / ``-q 8`` re-quantizes every matrix (group 64) to that width instead, except blocks that are
  already exactly of that width;
- the tokenizer (``tokenizer.ggml.*``) becomes ``tokenizer.json`` through transformers' pure-Python GGUF
  tokenizer builder, and ``tokenizer.chat_template`` goes into ``tokenizer_config.json``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from higgs.errors import HiggsError

log = logging.getLogger(__name__)

IMPORT_MARKER = "higgs-import.json"
SUPPORTED_ARCHITECTURES = ("llama",)

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_SKIPPED = {"rope_freqs"}  # turned back into config.json's rope_scaling (see recover_rope_scaling)


class GGUFImportError(HiggsError):
    """The GGUF file cannot be imported; the message says why."""


def _meta(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return default if value is None else value


def mlx_name(gguf_name: str) -> str | None:
    """mlx-lm parameter name for a llama.cpp tensor name (None for tensors that are dropped)."""
    base, _, suffix = gguf_name.rpartition(".")
    if base in _SKIPPED:
        return None
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{suffix}"
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.{suffix}"
    raise GGUFImportError(f"tensor '{gguf_name}' has no counterpart in mlx-lm's llama model")


def unpermute_rows(n_rows: int, n_head: int) -> Any:
    """Row order that undoes llama.cpp's rotary permutation of a Q or K projection."""
    import numpy as np

    if n_rows % (2 * n_head):
        raise GGUFImportError(f"cannot undo the rotary permutation: {n_rows} rows for {n_head} heads")
    return np.arange(n_rows).reshape(n_head, n_rows // n_head // 2, 2).transpose(0, 2, 1).reshape(-1)


# -- exact block re-packing -------------------------------------------------------------------------


def _pack(values: Any, bits: int) -> Any:
    """Pack unsigned ints (rows x cols, each < 2**bits) into MLX's uint32 layout (first value lowest bits)."""
    import numpy as np

    values = values.astype(np.uint32)
    per_word = 32 // bits
    rows, cols = values.shape
    words = values.reshape(rows, cols // per_word, per_word)
    shifts = (np.arange(per_word, dtype=np.uint32) * bits)[None, None, :]
    return np.bitwise_or.reduce(words << shifts, axis=2).astype(np.uint32)


def repack_blocks(raw: Any, qtype: str, rows: int, cols: int) -> tuple[Any, Any, Any, int]:
    """Q4_0 / Q4_1 / Q8_0 blocks -> (packed uint32 weights, float16 scales, float16 biases, bits), exact."""
    import numpy as np

    data = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, cols // 32, -1)
    d = data[..., 0:2].copy().view(np.float16)[..., 0]
    if qtype == "Q8_0":
        q = data[..., 2:34].view(np.int8).astype(np.int16) + 128
        scales, biases, bits = d, (-128 * d.astype(np.float32)).astype(np.float16), 8
    elif qtype in ("Q4_0", "Q4_1"):
        off = 2 if qtype == "Q4_0" else 4
        qs = data[..., off : off + 16]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
        if qtype == "Q4_0":
            scales, biases = d, (-8 * d.astype(np.float32)).astype(np.float16)
        else:
            scales, biases = d, data[..., 2:4].copy().view(np.float16)[..., 0]
        bits = 4
    else:
        raise GGUFImportError(f"{qtype} blocks cannot be re-packed exactly")
    return _pack(q.reshape(rows, cols), bits), scales, biases, bits


EXACT_TYPES = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
FLOAT_TYPES = ("F32", "F16", "BF16")


def _dequantize(tensor: Any) -> Any:
    import numpy as np
    from gguf import quants

    qtype = tensor.tensor_type
    if qtype.name == "F32":
        return np.asarray(tensor.data, dtype=np.float32)
    try:
        return quants.dequantize(tensor.data, qtype).astype(np.float32)
    except NotImplementedError as err:
        raise GGUFImportError(f"tensor {tensor.name} has type {qtype.name}, which cannot be dequantized") from err


def convert_tensors(reader: Any, bits: int | None, heads: tuple[int, int],
                    progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """All tensors as MLX arrays by mlx-lm name, and the per-layer quantization config."""
    import mlx.core as mx
    import numpy as np

    n_head, n_kv = heads
    arrays: dict[str, Any] = {}
    layer_quant: dict[str, Any] = {}
    for tensor in reader.tensors:
        name = mlx_name(tensor.name)
        if name is None:
            continue
        qtype = tensor.tensor_type.name
        shape = [int(n) for n in reversed(tensor.shape)]  # numpy order: rows (out), cols (in)
        perm = None
        if tensor.name.endswith((".attn_q.weight", ".attn_k.weight")):
            perm = unpermute_rows(shape[0], n_head if ".attn_q." in tensor.name else n_kv)
        module = name.rsplit(".", 1)[0]
        exact = qtype in EXACT_TYPES and len(shape) == 2 and (bits is None or bits == EXACT_TYPES[qtype])
        if exact:
            w, s, b, qbits = repack_blocks(tensor.data, qtype, shape[0], shape[1])
            if perm is not None:
                w, s, b = w[perm], s[perm], b[perm]
            arrays[name] = mx.array(w)
            arrays[f"{module}.scales"] = mx.array(s)
            arrays[f"{module}.biases"] = mx.array(b)
            layer_quant[module] = {"group_size": 32, "bits": qbits}
        else:
            values = _dequantize(tensor).reshape(shape)
            if perm is not None:
                values = values[perm]
            requant = len(shape) == 2 and (bits is not None or qtype not in FLOAT_TYPES)
            if requant:
                qbits, group = (bits, 64) if bits is not None else (8, 32)
                w, s, b = mx.quantize(mx.array(values).astype(mx.float16), group_size=group, bits=qbits)
                arrays[name], arrays[f"{module}.scales"], arrays[f"{module}.biases"] = w, s, b
                layer_quant[module] = {"group_size": group, "bits": qbits}
            else:
                dtype = mx.float32 if qtype == "F32" else mx.float16
                arrays[name] = mx.array(np.ascontiguousarray(values)).astype(dtype)
        if progress:
            progress(tensor.name)
    return arrays, layer_quant


# -- config and tokenizer ---------------------------------------------------------------------------


def llama3_rope_factors(head_dim: int, theta: float, factor: float, low: float, high: float,
                       original: int) -> list[float]:
    """Per-frequency scaling factors of Llama 3's rope scaling (what llama.cpp stores as ``rope_freqs``)."""
    import math

    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < original / high:
            factors.append(1.0)
        elif wavelen > original / low:
            factors.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


def recover_rope_scaling(reader: Any, config: dict[str, Any]) -> dict[str, Any] | None:
    """Llama 3.1+ files carry ``rope_freqs`` instead of the ``rope_scaling`` parameters: find the parameters
    that reproduce it (the factor is its maximum; the rest is searched among the values Meta's models use)."""
    import numpy as np

    tensor = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if tensor is None:
        return None
    stored = np.asarray(_dequantize(tensor), dtype=np.float64).reshape(-1)
    factor = float(stored.max())
    for original in (8192, 4096, 2048, 16384, 32768):
        for low in (1.0, 2.0):
            for high in (4.0, 8.0, 2.0):
                candidate = llama3_rope_factors(config["head_dim"], config["rope_theta"], factor, low, high, original)
                if len(candidate) == len(stored) and np.allclose(candidate, stored, rtol=1e-4, atol=1e-6):
                    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                            "high_freq_factor": high, "original_max_position_embeddings": original}
    raise GGUFImportError("the file's rope_freqs tensor does not match Llama 3 rope scaling with any known "
                          "parameters; its rotary embedding cannot be reproduced")


def build_config(reader: Any, arch: str, has_output: bool) -> dict[str, Any]:
    """A Hugging Face style ``config.json`` for the file's model."""
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    n_head = int(_meta(reader, f"{arch}.attention.head_count"))
    hidden = int(_meta(reader, f"{arch}.embedding_length"))
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(_meta(reader, f"{arch}.block_count")),
        "intermediate_size": int(_meta(reader, f"{arch}.feed_forward_length")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(_meta(reader, f"{arch}.attention.head_count_kv", n_head)),
        "head_dim": int(_meta(reader, f"{arch}.attention.key_length", hidden // n_head)),
        "rms_norm_eps": float(_meta(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_meta(reader, f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_meta(reader, f"{arch}.context_length", 4096)),
        "vocab_size": int(_meta(reader, f"{arch}.vocab_size", len(tokens.data) if tokens else 0)),
        "tie_word_embeddings": not has_output,
        "attention_bias": False,
        "mlp_bias": False,
    }
    for key in ("bos_token_id", "eos_token_id"):
        value = _meta(reader, f"tokenizer.ggml.{key}")
        if value is not None:
            config[key] = int(value)
    scaling = recover_rope_scaling(reader, config)
    if scaling is not None:
        config["rope_scaling"] = scaling
    return config


def build_tokenizer(reader: Any, arch: str) -> tuple[Any, dict[str, Any]]:
    """(``tokenizers.Tokenizer``, ``tokenizer_config.json`` dict) from the file's ``tokenizer.ggml.*``."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    if "tokenizer.ggml.tokens" not in reader.fields:
        raise GGUFImportError("the file carries no tokenizer (tokenizer.ggml.tokens is missing)")
    tokenizer_dict: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for group, names in GGUF_TOKENIZER_MAPPING.items():
        for key, name in names.items():
            value = _meta(reader, f"tokenizer.{key}")
            if value is not None:
                (tokenizer_dict if group == "tokenizer" else config)[name] = value
    tokens = tokenizer_dict["tokens"]
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unk_token_id"), ("pad_token", "pad_token_id")):
        token_id = tokenizer_dict.get(key)
        config[name] = tokens[int(token_id)] if token_id is not None and int(token_id) < len(tokens) else None
    if tokenizer_dict.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)
    try:
        backend, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
    except Exception as err:
        raise GGUFImportError(f"cannot build the tokenizer ({tokenizer_dict.get('tokenizer_type')!r} / "
                              f"{tokenizer_dict.get('pre_tokenizer_type')!r}): {err}") from err
    config.update({"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                   "model_max_length": int(_meta(reader, f"{arch}.context_length", 4096))})
    return backend, config


def import_gguf(source: Path, dest: Path, *, bits: int | None = None,
                progress: Callable[[str], None] | None = None) -> Path:
    """Convert ``source`` (a .gguf file) into an MLX model directory at ``dest``; return ``dest``.

    Raises:
        GGUFImportError: unsupported architecture, tensor type or tokenizer, or an unreadable file.
    """
    import mlx.core as mx
    from gguf import GGUFReader

    if bits not in (None, 4, 8):
        raise GGUFImportError(f"-q must be 4 or 8 (got {bits})")
    if source.is_dir():
        raise GGUFImportError(f"{source} is a directory; give the path of a .gguf file")
    if not source.is_file():
        raise GGUFImportError(f"{source} does not exist")
    try:
        reader = GGUFReader(source)
    except Exception as err:
        raise GGUFImportError(f"{source} is not a readable GGUF file: {err}") from err
    arch = str(_meta(reader, "general.architecture", ""))
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFImportError(f"{source.name}: GGUF architecture '{arch}' is not supported by the importer "
                              f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    started = time.perf_counter()
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    config = build_config(reader, arch, has_output)
    heads = (config["num_attention_heads"], config["num_key_value_heads"])
    backend, tok_config = build_tokenizer(reader, arch)
    arrays, layer_quant = convert_tensors(reader, bits, heads, progress)
    if layer_quant:
        common = max(({"group_size": q["group_size"], "bits": q["bits"]} for q in layer_quant.values()),
                     key=lambda q: sum(1 for v in layer_quant.values() if v == q))
        quant: dict[str, Any] = {**common, "mode": "affine"}
        quant.update({module: q for module, q in layer_quant.items() if q != common})
        config["quantization"] = quant
        config["quantization_config"] = quant

    dest.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(dest / "model.safetensors"), arrays, metadata={"format": "mlx"})
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    backend.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False))
    special = {k: tok_config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if tok_config.get(k)}
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False))
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id") if k in config}
    (dest / "generation_config.json").write_text(json.dumps(gen, indent=2))
    (dest / IMPORT_MARKER).write_text(json.dumps({
        "source": str(source), "source_size": source.stat().st_size, "bits": bits,
        "name": str(_meta(reader, "general.name", source.stem)), "seconds": round(time.perf_counter() - started, 2),
    }, indent=2))
    return dest
