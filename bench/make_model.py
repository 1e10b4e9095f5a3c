#!/usr/bin/env python3
# ruff: noqa: TID251, RUF005, B905, E501  -- a verbatim copy of the shared tools/make_model.py
"""Synthesize an MLX-format model directory with random weights.

The directory looks like what `mlx_lm.convert -q` (and the mlx-community
4-bit repos) produce: config.json (with a "quantization" block),
model.safetensors (or model-0000N-of-0000M.safetensors + index when large),
tokenizer.json, tokenizer_config.json (with a chat_template),
special_tokens_map.json and generation_config.json.

Weights are random but every shape, dtype and quantization setting matches the
real model, so load time, memory and speed are the same as for the real
checkpoint (quality is of course nil: the output is gibberish).

The tokenizer is a synthetic byte-level BPE built with the same JSON layout as
the real one (Llama-3 / Qwen2-style pre-tokenizer regex, ByteLevel decoder,
same special tokens at the same ids), so mlx_lm picks the same streaming
detokenizer (BPEStreamingDetokenizer) as for the real model, and every id in
[0, vocab_size) decodes.

Usage:
  python make_model.py --preset tiny   --out models/tiny-llama-4bit
  python make_model.py --preset llama-3.2-1b-instruct --out models/Llama-3.2-1B-Instruct-4bit
  python make_model.py --preset qwen3-1.7b --out models/Qwen3-1.7B-4bit
  python make_model.py --list
Options: --bits 4 --group-size 64 (mlx-community default), --bits 0 for
unquantized, --dtype float32|float16|bfloat16 (dtype of the non-quantized
params and of the quantization scales/biases; default bfloat16 as in the real
repos), --seed N, --force (overwrite).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import sys
import time
from pathlib import Path

# --------------------------------------------------------------------------
# Real configs (values as in the Hugging Face config.json of each model)
# --------------------------------------------------------------------------

LLAMA_3_2_1B_INSTRUCT = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}

QWEN3_1_7B = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 6144,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

# Not a real model: a small Llama-3-style config for fast tests (~10M params).
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 31744,
    "eos_token_id": [31745, 31752, 31753],
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 256,
    "intermediate_size": 1024,
    "max_position_embeddings": 8192,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 32000,
}

PRESETS = {
    # name: (config, tokenizer family)
    "tiny": (TINY_LLAMA, "llama3"),
    "llama-3.2-1b-instruct": (LLAMA_3_2_1B_INSTRUCT, "llama3"),
    "qwen3-1.7b": (QWEN3_1_7B, "qwen3"),
}

# --------------------------------------------------------------------------
# Chat templates (simplified versions of the real ones; same special tokens)
# --------------------------------------------------------------------------

LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set content = message['content'] %}"
    "{%- else %}{%- set content = message['content'] | map(attribute='text') | join('') %}{%- endif %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + content | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set content = message['content'] %}"
    "{%- else %}{%- set content = message['content'] | map(attribute='text') | join('') %}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# Pre-tokenizer regexes of the real tokenizers.
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

QWEN3_NAMED_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
    "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte -> printable unicode char map used by ByteLevel BPE."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def llama3_specials(first_id: int) -> list[str]:
    names = [
        "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
        "<|reserved_special_token_2|>", "<|start_header_id|>",
        "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
    ]
    k = 3
    while len(names) < 256:
        names.append(f"<|reserved_special_token_{k}|>")
        k += 1
    return names


def synth_bpe(n_regular: int, seed: int) -> tuple[dict[str, int], list[list[str]]]:
    """Build a byte-level BPE vocab of exactly n_regular tokens + merges.

    Ids 0..255 are the 256 byte symbols; every further token is a prefix of a
    pseudo-word (optionally with the leading-space marker 'Ġ') made by merging
    the previous prefix with one more character, so the merge list is valid.
    """
    b2u = bytes_to_unicode()
    vocab: dict[str, int] = {}
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    merges: list[list[str]] = []

    def add(left: str, right: str) -> None:
        tok = left + right
        if tok not in vocab and len(vocab) < n_regular:
            vocab[tok] = len(vocab)
            merges.append([left, right])

    sp, nl = b2u[ord(" ")], b2u[ord("\n")]
    add(sp, sp)
    add(nl, nl)
    add(sp + sp, sp + sp)
    for p in ".,:;!?)(\"'-":
        add(sp, p)
    for d in "0123456789":
        for e in "0123456789":
            add(d, e)

    rng = random.Random(seed)
    onsets = list("bcdfghjklmnprstvwz") + ["ch", "sh", "th", "st", "tr", "pl", "br", "gr", "cl", "qu"]
    vowels = list("aeiou") + ["ai", "ea", "ou", "io", "ee", "oo"]
    codas = ["", "", "", "n", "r", "s", "t", "l", "m", "ng", "st", "nd"]
    iters = 0
    while len(vocab) < n_regular:
        iters += 1
        if iters > 50 * n_regular:  # hard bound
            raise RuntimeError("could not reach vocab size")
        nsyl = rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
        word = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(nsyl))
        if rng.random() < 0.1:
            word = word.capitalize()
        if rng.random() < 0.65:
            word = sp + word
        prefix = word[0]
        for ch in word[1:]:
            add(prefix, ch)
            prefix = prefix + ch
            if len(vocab) >= n_regular:
                break
    return vocab, merges


def build_tokenizer(family: str, vocab_size: int, seed: int):
    """Return (tokenizer_json_dict, tokenizer_config_dict, special_tokens_map)."""
    if family == "llama3":
        n_regular = vocab_size - 256
        specials = llama3_specials(n_regular)
        bos, eos, pad = "<|begin_of_text|>", "<|eot_id|>", None
        regex = LLAMA3_SPLIT_REGEX
        chat_template = LLAMA3_CHAT_TEMPLATE
        normalizer = None
    elif family == "qwen3":
        n_regular = 151643 if vocab_size == 151936 else vocab_size - 293
        specials = list(QWEN3_NAMED_SPECIALS)
        k = 0
        while n_regular + len(specials) < vocab_size:
            # The real tokenizer stops at 151668; the embedding has 151936 rows.
            # Pad so that every id the (random) model can emit decodes.
            specials.append(f"<|extra_{k}|>")
            k += 1
        bos, eos, pad = None, "<|im_end|>", "<|endoftext|>"
        regex = QWEN2_SPLIT_REGEX
        chat_template = QWEN3_CHAT_TEMPLATE
        normalizer = {"type": "NFC"}
    else:
        raise ValueError(family)

    vocab, merges = synth_bpe(n_regular, seed)
    assert len(vocab) == n_regular, (len(vocab), n_regular)
    added_tokens = []
    for i, s in enumerate(specials):
        added_tokens.append({
            "id": n_regular + i, "content": s, "single_word": False,
            "lstrip": False, "rstrip": False, "normalized": False, "special": True,
        })

    pre_tokenizer = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }
    byte_level_pp = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    if bos is not None:
        bos_id = n_regular + specials.index(bos)
        post_processor = {
            "type": "Sequence",
            "processors": [
                byte_level_pp,
                {
                    "type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [
                        {"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}},
                    ],
                    "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
                },
            ],
        }
    else:
        post_processor = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}

    tok_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None,
            "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": False, "byte_fallback": False, "ignore_merges": family == "llama3",
            "vocab": vocab, "merges": merges,
        },
    }
    added_decoder = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in added_tokens
    }
    tok_config = {
        "added_tokens_decoder": added_decoder,
        "bos_token": bos,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos,
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast" if family == "llama3" else "Qwen2TokenizerFast",
    }
    if pad is not None:
        tok_config["pad_token"] = pad
    if family == "llama3":
        tok_config["model_input_names"] = ["input_ids", "attention_mask"]
    special_map = {"eos_token": eos}
    if bos:
        special_map["bos_token"] = bos
    if pad:
        special_map["pad_token"] = pad
    return tok_json, tok_config, special_map


def make_model(config: dict, family: str, out: Path, bits: int, group_size: int, seed: int) -> None:
    import mlx.core as mx
    from mlx.utils import tree_map_with_path
    from mlx_lm.utils import _get_classes, quantize_model, save_config, save_model

    t0 = time.time()
    config = copy.deepcopy(config)
    mx.random.seed(seed)
    model_class, model_args_class = _get_classes(config=config)
    model = model_class(model_args_class.from_dict(config))

    # Cast like mlx_lm.convert does (non-quantized params end up bf16).
    dtype = getattr(mx, config.get("torch_dtype", "bfloat16"))
    cast_predicate = getattr(model, "cast_predicate", lambda _: True)

    def set_dtype(k, v):
        if cast_predicate(k) and mx.issubdtype(v.dtype, mx.floating):
            return v.astype(dtype)
        return v

    model.update(tree_map_with_path(set_dtype, model.parameters()))

    if bits:
        model, config = quantize_model(model, config, group_size, bits, mode="affine")

    out.mkdir(parents=True, exist_ok=True)
    # mlx_lm's own writer: model.safetensors (or shards + index when > 5 GB).
    save_model(out, model, donate_model=True)
    save_config(config, config_path=out / "config.json")
    print(f"[make_model] weights written in {time.time() - t0:.1f}s", flush=True)

    t1 = time.time()
    tok_json, tok_config, special_map = build_tokenizer(family, config["vocab_size"], seed)
    with open(out / "tokenizer.json", "w", encoding="utf-8") as f:
        json.dump(tok_json, f, ensure_ascii=False)
    with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(tok_config, f, ensure_ascii=False, indent=2)
    with open(out / "special_tokens_map.json", "w", encoding="utf-8") as f:
        json.dump(special_map, f, ensure_ascii=False, indent=2)
    gen_cfg = {"eos_token_id": config["eos_token_id"], "do_sample": False}
    if config.get("bos_token_id") is not None:
        gen_cfg["bos_token_id"] = config["bos_token_id"]
    with open(out / "generation_config.json", "w") as f:
        json.dump(gen_cfg, f, indent=2)
    with open(out / "SYNTHETIC.md", "w") as f:
        f.write(
            "Random weights with the real config/shapes; synthetic byte-level BPE tokenizer.\n"
            "Made by bench/make_model.py (a copy of the shared tools/make_model.py). Speed-equivalent to the real model; output is gibberish.\n"
        )
    print(f"[make_model] tokenizer written in {time.time() - t1:.1f}s", flush=True)


def verify(out: Path, family: str) -> None:
    """Load with mlx_lm and run a few tokens; decode random ids."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, tok = load(str(out))
    cfg = json.loads((out / "config.json").read_text())
    V = cfg["vocab_size"]
    ids = [0, 1, 255, 256, V // 2, V - 300, V - 1]
    txt = tok.decode(ids)
    assert isinstance(txt, str)
    msgs = [{"role": "user", "content": "hello there, how are you?"}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True)
    out_ids = []
    for (t, _), _n in zip(generate_step(mx.array(prompt), model, max_tokens=8), range(8)):
        out_ids.append(t)
    print(f"[verify] detokenizer={type(tok.detokenizer).__name__} eos={sorted(tok.eos_token_ids)} "
          f"prompt_len={len(prompt)} sample_out={out_ids} text={tok.decode(out_ids)!r}")
    print(f"[verify] template: {tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--config", help="path to a HF config.json to use instead of a preset")
    ap.add_argument("--tokenizer-family", choices=["llama3", "qwen3"], default=None)
    ap.add_argument("--out", help="output directory")
    ap.add_argument("--bits", type=int, default=4, help="quantization bits (0 = keep bf16)")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                    help="dtype of non-quantized params/scales (default: the config's torch_dtype, "
                         "bfloat16 for all presets, as in mlx-community repos)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()

    if args.list:
        for k, (c, fam) in PRESETS.items():
            print(f"{k:24s} {c['model_type']:6s} hidden={c['hidden_size']} layers={c['num_hidden_layers']} "
                  f"vocab={c['vocab_size']} tokenizer={fam}")
        return 0
    if not args.out or not (args.preset or args.config):
        ap.error("--out and one of --preset/--config are required")
    if args.preset:
        config, family = PRESETS[args.preset]
    else:
        config = json.loads(Path(args.config).read_text())
        family = "qwen3" if config["model_type"].startswith("qwen") else "llama3"
    family = args.tokenizer_family or family
    if args.dtype:
        config = dict(config, torch_dtype=args.dtype)

    out = Path(args.out)
    if out.exists():
        if not args.force:
            print(f"{out} exists (use --force)", file=sys.stderr)
            return 1
        shutil.rmtree(out)
    make_model(config, family, out, args.bits, args.group_size, args.seed)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"[make_model] {out}: {size / 1e6:.1f} MB")
    if not args.no_verify:
        verify(out, family)
    return 0


if __name__ == "__main__":
    sys.exit(main())
