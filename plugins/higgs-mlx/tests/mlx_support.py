"""Helpers shared by this plugin's tests (uniquely named so it never collides with other plugins' tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from higgs.config import HiggsSettings, ModelSettings, ProviderSettings
from higgs.hookspecs import hookimpl
from higgs.interfaces import CallContext, ProviderContext, RouteDecision
from higgs.specs import ArchitectureSpec

from higgs_mlx.provider import MlxProvider

LLAMA = ArchitectureSpec(name="llama", model_types=("llama",), module="mlx_lm.models.llama")
ARCHES = {"llama": LLAMA}


def make_provider(models: list[tuple[Path, str]], **server: Any) -> MlxProvider:
    """A provider for ``models`` (path, name) with the llama architecture registered."""
    settings = HiggsSettings(models=[ModelSettings(path=str(p), name=n) for p, n in models])
    for key, value in server.items():
        setattr(settings.server, key, value)
    return MlxProvider(ProviderSettings(name="higgs"), ProviderContext(settings=settings, formats={},
                                                                       architectures=ARCHES))


def call_context() -> CallContext:
    """A CallContext for direct provider calls."""
    return CallContext(request_id="test", client_format="openai", headers={},
                       route=RouteDecision(providers=("higgs",), model="tiny", rule="local", method="local"))


def mlx_lm_greedy(model_dir: Path, prompt: list[int], max_tokens: int) -> tuple[list[int], str]:
    """mlx-lm's own greedy generation for ``prompt``: (tokens from generate_step up to and including EOS,
    text from stream_generate)."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step, stream_generate

    model, tok = load(str(model_dir))
    tokens: list[int] = []
    for token, _ in generate_step(mx.array(prompt), model, max_tokens=max_tokens):
        tokens.append(int(token))
        if token in tok.eos_token_ids:
            break
    text = "".join(r.text for r in stream_generate(model, tok, prompt, max_tokens=max_tokens))
    return tokens, text


class LlamaArchPlugin:
    """Registers the llama architecture (mlx-lm's module) so this plugin's tests need no arch plugin."""

    @hookimpl
    def higgs_architectures(self) -> list[ArchitectureSpec]:
        return [LLAMA]


async def engine_greedy(engine: Any, lm: Any, prompts: list[list[int]], n: int) -> list[list[int]]:
    """Submit every prompt at once to a started ``Engine`` (greedy, ``ignore_eos``, ``n`` tokens) and
    return each one's generated token ids, read from the chunks' logprobs."""
    import asyncio

    from higgs.messages import Sampling

    from higgs_mlx.engine import Chunk, Done, Failed, Job
    from higgs_mlx.sampling import RequestSampler

    loop = asyncio.get_running_loop()
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue() for _ in prompts]
    for prompt, q in zip(prompts, queues, strict=True):
        engine.submit(Job(lm=lm, prompt=prompt, max_tokens=n, sampler=RequestSampler(Sampling(temperature=0)),
                          top_logprobs=0, ignore_eos=True,
                          emit=lambda item, q=q: loop.call_soon_threadsafe(q.put_nowait, item)))
    out: list[list[int]] = []
    for q in queues:
        tokens: list[int] = []
        while True:
            item = await asyncio.wait_for(q.get(), 60)
            if isinstance(item, Failed):
                raise item.error
            if isinstance(item, Chunk) and item.logprobs:
                tokens.extend(e["id"] for e in item.logprobs)
            if isinstance(item, Done):
                break
        out.append(tokens)
    return out


def mlx_app(settings: dict[str, Any]) -> Any:
    """The real gateway app with this plugin and the llama architecture, built from ``settings``."""
    from higgs.testing import build_app

    import higgs_mlx

    return build_app(settings, plugins=[("mlx", higgs_mlx), ("test-arch-llama", LlamaArchPlugin())])


_INVERSE = {
    "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name(name: str) -> str:
    module, _, suffix = name.rpartition(".")
    if module in _INVERSE:
        return f"{_INVERSE[module]}.{suffix}"
    _, _, layer, rest = module.split(".", 3)
    return f"blk.{layer}.{_INVERSE[rest]}.{suffix}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model_dir: Path, out: Path, qtype_for) -> dict[str, tuple[object, np.ndarray]]:
    """Write ``model_dir`` (a float32 tiny llama) as a llama.cpp-style GGUF; return name -> (type, stored data)."""
    import gguf
    import mlx.core as mx

    config = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny test llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_vocab_size(config["vocab_size"])
    vocab = {**tok["model"]["vocab"], **{t["content"]: t["id"] for t in tok["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = {t["content"] for t in tok["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in specials else 1 for t in tokens])
    writer.add_token_merges([" ".join(m) for m in tok["model"]["merges"]])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_chat_template(tok_cfg["chat_template"])

    stored = {}
    weights = {k: np.array(v) for k, v in mx.load(str(model_dir / "model.safetensors")).items()}
    for name, value in weights.items():
        if name.endswith("self_attn.q_proj.weight"):
            value = llama_cpp_permute(value, config["num_attention_heads"])
        elif name.endswith("self_attn.k_proj.weight"):
            value = llama_cpp_permute(value, config["num_key_value_heads"])
        qtype = qtype_for(name) if value.ndim == 2 else gguf.GGMLQuantizationType.F32
        if qtype == gguf.GGMLQuantizationType.F32:
            data = value.astype(np.float32)
            writer.add_tensor(gguf_name(name), data)
        elif qtype == gguf.GGMLQuantizationType.F16:
            data = value.astype(np.float16)
            writer.add_tensor(gguf_name(name), data)
        elif qtype.name.endswith("_K"):  # gguf-py cannot quantize k-quants: random blocks with sane scales
            data = random_kquant_blocks(qtype, value.shape, seed=len(stored))
            writer.add_tensor(gguf_name(name), data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            data = gguf.quants.quantize(value.astype(np.float32), qtype)
            writer.add_tensor(gguf_name(name), data, raw_shape=data.shape, raw_dtype=qtype)
        stored[name] = (qtype, data)
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type") == "llama3":  # llama.cpp stores Llama 3 rope scaling as per-frequency factors
        from higgs_mlx.gguf_import import llama3_rope_factors

        factors = llama3_rope_factors(config["head_dim"], config["rope_theta"], scaling["factor"],
                                      scaling["low_freq_factor"], scaling["high_freq_factor"],
                                      scaling["original_max_position_embeddings"])
        writer.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def random_kquant_blocks(qtype: Any, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Raw k-quant blocks (random quants, small positive super-block scales) for a ``rows x cols`` matrix."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    raw = np.random.default_rng(seed).integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    scale = np.array([0.002], dtype=np.float16).view(np.uint8)
    if qtype.name in ("Q4_K", "Q5_K", "Q2_K"):  # d, dmin at the start (Q2_K: at the end)
        at = (0, 2) if qtype.name != "Q2_K" else (size - 4, size - 2)
        for offset in at:
            raw[:, offset : offset + 2] = scale
    else:  # Q3_K, Q6_K: d at the end
        raw[:, size - 2 : size] = scale
    return raw.reshape(rows, cols // block * size)
