"""Tiny random-weight MLX models for tests: one complete model directory per ``model_type`` in seconds.

``build_tiny_model("qwen3", tmp_path / "qwen3")`` writes what ``mlx_lm.convert`` would: ``config.json`` with
the keys mlx-lm's ``ModelArgs`` for that ``model_type`` expects (scaled down to hidden 64, 2 layers, 4 heads,
2 KV heads), ``model.safetensors`` saved from an instance of mlx-lm's own ``Model`` class (optionally
quantized with mlx-lm's quantizer), and a synthetic byte-level BPE tokenizer (``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``) whose every id decodes, with a ChatML-like chat
template by default. The weights are random, so the text is gibberish, but mlx-lm and higgs must agree on it
token for token.

By default (``plain_output=True``) the output-projection rows of every special token and of every byte
token that is not printable ASCII are zeroed, so greedy decoding emits printable ASCII text only: comparing
streamed text with mlx-lm's is then exact, and no reasoning or tool-call tag appears by chance. Pass
``plain_output=False`` to test EOS, special tokens or UTF-8 split across tokens.

mlx and mlx-lm are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

if TYPE_CHECKING:
    from higgs.specs import ArchitectureSpec

__all__ = [
    "CHATML_TEMPLATE",
    "DEFAULT",
    "SPECIAL_TOKENS",
    "TINY_CONFIGS",
    "ArchitecturePluginContract",
    "Reference",
    "build_tiny_model",
    "check_architecture",
    "fallback_tokenizer",
    "reference_generate",
    "render_template",
    "tiny_config",
]


class _Default:
    """Sentinel type: "use the default chat template"."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = _Default()

#: ChatML with string or list-of-text-parts content, ``add_generation_prompt`` and Qwen3's
#: ``enable_thinking=False`` switch (an empty think block), like the real Qwen templates.
CHATML_TEMPLATE: Final = (
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set content = message['content'] %}"
    "{%- elif message['content'] is none %}{%- set content = '' %}"
    "{%- else %}{%- set content = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') %}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

#: Special tokens of the synthetic tokenizer, placed at the top of the vocabulary. They cover the turn,
#: stop, reasoning and tool-call markers of every family higgs ships, so family knowledge can be tested.
SPECIAL_TOKENS: Final[tuple[str, ...]] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
    "[INST]",
    "[/INST]",
    "[TOOL_CALLS]",
    "<\uff5cbegin\u2581of\u2581sentence\uff5c>",  # DeepSeek's fullwidth bars
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
)

_EOS: Final = "<|im_end|>"
_PAD: Final = "<|endoftext|>"
_VOCAB_SIZE: Final = 384

_COMMON: Final[dict[str, Any]] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": _VOCAB_SIZE,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
}

#: Per ``model_type``: the keys its real ``config.json`` carries (those mlx-lm's ``ModelArgs`` reads),
#: scaled down. Merged over ``_COMMON``; ``None`` removes a common key the family does not use.
TINY_CONFIGS: Final[dict[str, dict[str, Any]]] = {
    "llama": {"head_dim": 16, "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False},
    "mistral": {"head_dim": 16, "tie_word_embeddings": False, "sliding_window": None},
    "qwen2": {"tie_word_embeddings": True, "rope_theta": 1000000.0},
    "qwen3": {"head_dim": 16, "tie_word_embeddings": True, "rope_theta": 1000000.0},
    "qwen3_moe": {
        "head_dim": 16,
        "tie_word_embeddings": False,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "moe_intermediate_size": 32,
        "norm_topk_prob": True,
    },
    "qwen3_next": {
        "head_dim": 16,
        "tie_word_embeddings": False,
        "linear_num_value_heads": 4,
        "linear_num_key_heads": 2,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_conv_kernel_dim": 4,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "shared_expert_intermediate_size": 32,
        "mlp_only_layers": [],
        "moe_intermediate_size": 32,
        "partial_rotary_factor": 0.25,
        "norm_topk_prob": True,
        # Layer 0 is a gated-delta-net (linear attention) layer, layer 1 full attention.
        "full_attention_interval": 2,
    },
    "gemma2": {
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "rms_norm_eps": 1e-6,
    },
    "phi3": {"tie_word_embeddings": False, "original_max_position_embeddings": 2048},
    "starcoder2": {"rms_norm_eps": None, "norm_epsilon": 1e-5, "tie_word_embeddings": True},
    "deepseek_v2": {
        "num_key_value_heads": 4,
        "moe_intermediate_size": 32,
        "n_shared_experts": 1,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "routed_scaling_factor": 1.0,
        "kv_lora_rank": 16,
        "q_lora_rank": None,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 16,
        "v_head_dim": 16,
        "topk_method": "greedy",
        "moe_layer_freq": 1,
        "first_k_dense_replace": 1,
        "rope_scaling": {
            "type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 512,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
        },
    },
}


def tiny_config(model_type: str, **overrides: Any) -> dict[str, Any]:
    """The scaled-down ``config.json`` dict for ``model_type`` (no quantization block yet).

    Raises:
        KeyError: no tiny config is known for ``model_type``.
    """
    if model_type not in TINY_CONFIGS:
        known = ", ".join(sorted(TINY_CONFIGS))
        raise KeyError(f"no tiny config for model_type {model_type!r} (known: {known})")
    config: dict[str, Any] = {"model_type": model_type, **copy.deepcopy(_COMMON)}
    for key, value in {**TINY_CONFIGS[model_type], **overrides}.items():
        if value is None and key in _COMMON:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def build_tiny_model(
    model_type: str,
    path: Path,
    *,
    seed: int = 0,
    chat_template: str | _Default | None = DEFAULT,
    quantize_bits: int | None = None,
    group_size: int = 32,
    dtype: str = "float32",
    plain_output: bool = True,
    embedding_std: float = 0.02,
    weight_gain: float = 4.0,
    **config_overrides: Any,
) -> Path:
    """Write a complete tiny MLX model directory for ``model_type`` at ``path`` and return ``path``.

    Args:
        model_type: a ``model_type`` of ``TINY_CONFIGS`` (the architecture is mlx-lm's, looked up the way
            ``mlx_lm.load`` does, ``mistral`` -> ``llama`` included).
        path: output directory (created; existing files are overwritten).
        seed: seeds the weights and the synthetic vocabulary.
        chat_template: the tokenizer's chat template; ``DEFAULT`` is ``CHATML_TEMPLATE``, ``None`` writes
            a tokenizer without one.
        quantize_bits: 4 or 8 for mlx-lm's affine quantization (``group_size``), None to keep ``dtype``.
        group_size: quantization group size (hidden sizes are 64, so 32 or 64).
        dtype: dtype of the non-quantized parameters and quantization scales.
        embedding_std: standard deviation of the token embeddings (and of an untied LM head); mlx's
            default N(0, 1) embeddings swamp two tiny layers, so the model would only echo its last token.
        weight_gain: factor on every other weight matrix; with mlx's default initialization two tiny layers
            barely move the residual stream and greedy decoding repeats one token. The default makes the
            output vary from token to token, so a wrong position or KV-cache shows.
        plain_output: zero the output rows of special and non-printable byte tokens (see module doc).
        **config_overrides: replace or add ``config.json`` keys (``num_hidden_layers=1``, ...).
    """
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm.utils import _get_classes, quantize_model, save_config, save_model

    config = tiny_config(model_type, **config_overrides)
    vocab_size = int(config["vocab_size"])
    tokens = _Vocabulary.build(vocab_size, seed)
    config["eos_token_id"] = tokens.ids[_EOS]
    config.setdefault("bos_token_id", None)
    config.setdefault("pad_token_id", tokens.ids[_PAD])

    mx.random.seed(seed)
    model_class, args_class = _get_classes(config=config)
    model: Any = model_class(args_class.from_dict(config))
    target = getattr(mx, dtype)
    model.update(tree_map(lambda v: v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v, model.parameters()))
    _rescale(model, embedding_std, weight_gain)
    if plain_output:
        _silence_rows(model, tokens.silent_ids())
    mx.eval(model.parameters())
    if quantize_bits is not None:
        model, config = quantize_model(model, config, group_size, quantize_bits)

    path.mkdir(parents=True, exist_ok=True)
    save_model(path, model, donate_model=True)
    save_config(config, config_path=path / "config.json")
    template = CHATML_TEMPLATE if isinstance(chat_template, _Default) else chat_template
    tokens.write(path, template)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": config["eos_token_id"]}, indent=2))
    return path


@dataclass(frozen=True)
class Reference:
    """What mlx-lm's own greedy generation produced: prompt ids, generated ids and their text."""

    prompt_tokens: list[int]
    tokens: list[int]
    text: str


def reference_generate(
    path: Path,
    *,
    messages: Sequence[dict[str, Any]] | None = None,
    prompt: str | None = None,
    max_tokens: int = 8,
    chat_template: str | None = None,
    stop_tokens: Sequence[str] = (),
    **template_kwargs: Any,
) -> Reference:
    """Greedy generation with mlx-lm alone (``mlx_lm.load`` + ``stream_generate``), the ground truth.

    Args:
        path: a model directory (``build_tiny_model``).
        messages: a chat, rendered with the tokenizer's chat template (or ``chat_template``) and
            ``add_generation_prompt=True``; ``template_kwargs`` go to the template (``enable_thinking``, ...).
        prompt: a raw text prompt instead, encoded the way ``mlx_lm.generate`` does (BOS added if the
            tokenizer adds one).
        max_tokens: tokens to generate at most.
        stop_tokens: extra tokens that end generation besides the tokenizer's EOS (not included).
    """
    from mlx_lm import load, stream_generate

    loaded = load(str(path))
    model, tokenizer = loaded[0], cast(Any, loaded[1])
    if messages is not None:
        ids = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, chat_template=chat_template, **template_kwargs
        )
    elif prompt is not None:
        ids = tokenizer.encode(prompt)
    else:
        raise ValueError("pass messages or prompt")
    prompt_ids = [int(i) for i in ids]
    stops = {int(i) for i in tokenizer.eos_token_ids}
    stops |= {tokenizer.convert_tokens_to_ids(t) for t in stop_tokens}
    tokens: list[int] = []
    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    for response in stream_generate(model, tokenizer, prompt_ids, max_tokens=max_tokens):
        if response.token in stops:
            break
        tokens.append(int(response.token))
        detokenizer.add_token(response.token)
    detokenizer.finalize()
    return Reference(prompt_ids, tokens, detokenizer.text)


def check_architecture(spec: ArchitectureSpec, directory: Path, *, max_tokens: int = 6) -> Reference:
    """Check an architecture plugin against mlx-lm on a tiny model of each of its ``model_types``.

    For every ``model_type``: build a tiny model, load it through the spec's ``module`` (mlx-lm's
    ``Model``/``ModelArgs`` contract, via ``mlx_lm.utils.load_model``), and compare its greedy tokens on a
    short prompt with mlx-lm's own generation. Returns the last reference.

    Raises:
        AssertionError: the module breaks the contract or generates different tokens.
    """
    import importlib

    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    module = importlib.import_module(spec.module)
    assert hasattr(module, "Model") and hasattr(module, "ModelArgs"), f"{spec.module} lacks Model/ModelArgs"
    reference = None
    for model_type in spec.model_types:
        path = build_tiny_model(model_type, directory / model_type)
        model, config = load_model(path, get_model_classes=lambda config: (module.Model, module.ModelArgs))
        assert config["model_type"] == model_type
        reference = reference_generate(path, prompt="hello there, how are you", max_tokens=max_tokens)
        tokens = [
            int(token)
            for token, _ in generate_step(mx.array(reference.prompt_tokens), model, max_tokens=len(reference.tokens))
        ]
        assert tokens == reference.tokens, f"{model_type}: {tokens} != mlx-lm's {reference.tokens}"
    assert reference is not None, f"{spec.name} has no model_types"
    return reference


def fallback_tokenizer(model_type: str, directory: Path) -> Any:
    """The Hugging Face tokenizer of a tiny model without a chat template (a family's fallback then renders)."""
    from mlx_lm.tokenizer_utils import load

    path = build_tiny_model(model_type, directory, chat_template=None, num_hidden_layers=1)
    return load(path)._tokenizer


def render_template(tokenizer: Any, template: str | None, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """A chat template rendered the way the engine renders it (Hugging Face's engine), for a generation prompt
    unless ``add_generation_prompt=False``; ``bos_token``/``eos_token`` and template variables go in kwargs."""
    kwargs.setdefault("add_generation_prompt", True)
    return str(tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs))

def _rescale(model: Any, std: float, gain: float) -> None:
    """Redraw the token embeddings (and an untied LM head) from N(0, std); multiply other matrices by gain."""
    import mlx.core as mx
    from mlx.utils import tree_map_with_path

    def scale(path: str, value: mx.array) -> mx.array:
        if value.ndim >= 2 and "embed_tokens" not in path and "lm_head" not in path:
            return value * gain
        return value

    model.update(tree_map_with_path(scale, model.parameters()))
    for owner in (model.model.embed_tokens, getattr(model, "lm_head", None)):
        if owner is not None:
            weight = owner.weight
            owner.weight = (mx.random.normal(weight.shape) * std).astype(weight.dtype)


def _silence_rows(model: Any, ids: list[int]) -> None:
    """Zero the output-projection rows of ``ids`` (the LM head, or the tied embedding)."""
    import mlx.core as mx

    owner = getattr(model, "lm_head", None)
    if owner is None:
        owner = model.model.embed_tokens
    weight = owner.weight
    mask = mx.ones((weight.shape[0], 1), dtype=weight.dtype)
    mask[mx.array(ids)] = 0
    owner.weight = weight * mask


class _Vocabulary:
    """A synthetic byte-level BPE vocabulary: 256 byte symbols, merged pseudo-words, then specials."""

    def __init__(self, vocab: dict[str, int], merges: list[list[str]], specials: dict[str, int]) -> None:
        self.vocab = vocab
        self.merges = merges
        self.ids = specials

    @classmethod
    def build(cls, vocab_size: int, seed: int) -> _Vocabulary:
        """Fill ``vocab_size`` ids: bytes, merges in a valid BPE order, then ``SPECIAL_TOKENS``."""
        n_regular = vocab_size - len(SPECIAL_TOKENS)
        if n_regular < 256 + 8:
            raise ValueError(f"vocab_size {vocab_size} is too small (at least {256 + 8 + len(SPECIAL_TOKENS)})")
        symbol = _byte_symbols()
        vocab = {symbol[b]: b for b in range(256)}
        merges: list[list[str]] = []

        def merge(left: str, right: str) -> None:
            if left + right not in vocab and len(vocab) < n_regular:
                vocab[left + right] = len(vocab)
                merges.append([left, right])

        space = symbol[ord(" ")]
        rng = random.Random(seed)
        syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
        while len(vocab) < n_regular:
            word = "".join(rng.choice(syllables) for _ in range(rng.randint(1, 3)))
            if rng.random() < 0.6:
                word = space + word
            prefix = word[0]
            for char in word[1:]:
                merge(prefix, char)
                prefix += char
        specials = {token: n_regular + i for i, token in enumerate(SPECIAL_TOKENS)}
        return cls(vocab, merges, specials)

    def silent_ids(self) -> list[int]:
        """Ids greedy decoding should never pick in plain-output mode: specials and non-printable bytes."""
        symbol = _byte_symbols()
        printable = {symbol[b] for b in range(32, 127)} | {symbol[ord("\n")]}
        silent = [i for tok, i in self.vocab.items() if len(tok) == 1 and tok not in printable]
        return silent + sorted(self.ids.values())

    def write(self, path: Path, chat_template: str | None) -> None:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
        added = [
            {
                "id": i,
                "content": tok,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for tok, i in self.ids.items()
        ]
        split = (
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        )
        tokenizer = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False},
                    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
                ],
            },
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": self.vocab,
                "merges": self.merges,
            },
        }
        config: dict[str, Any] = {
            "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added},
            "bos_token": None,
            "eos_token": _EOS,
            "pad_token": _PAD,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 2048,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        if chat_template is not None:
            config["chat_template"] = chat_template
        special_map = {"eos_token": _EOS, "pad_token": _PAD}
        (path / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
        (path / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
        (path / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2), encoding="utf-8")


def _byte_symbols() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ArchitecturePluginContract:
    """The tests every architecture plugin passes, shared instead of copied into each plugin.

    Use it in a plugin's tests as ``class TestArchitecturePlugin(ArchitecturePluginContract)`` with
    ``module`` (the plugin module, exposing ``SPEC`` and ``higgs_architectures``) and ``entry_point`` (its
    name in the ``higgs`` entry-point group).
    """

    module: Any
    entry_point: str

    def test_registered_under_the_higgs_entry_point_group(self) -> None:
        from importlib.metadata import entry_points

        (entry,) = [e for e in entry_points(group="higgs") if e.name == self.entry_point]
        assert entry.load() is self.module
        assert list(self.module.higgs_architectures()) == [self.module.SPEC]

    def test_the_registry_maps_its_model_types_to_the_spec(self) -> None:
        from higgs.testing import build_registry

        spec = self.module.SPEC
        registry = build_registry([(self.entry_point, self.module)], builtins=False)
        assert {t: registry.architectures[t] for t in spec.model_types} == dict.fromkeys(spec.model_types, spec)

    def test_registration_imports_no_model_code(self) -> None:
        import subprocess
        import sys

        heavy = "('mlx', 'mlx_lm', 'transformers')"
        code = (f"import sys, {self.module.__name__}; "
                f"print([m for m in sys.modules if m.split('.')[0] in {heavy}])")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]"

    def test_the_module_follows_mlx_lm_and_generates_like_it(self, tmp_path: Path) -> None:
        reference = check_architecture(self.module.SPEC, tmp_path)
        assert len(reference.tokens) == 6
