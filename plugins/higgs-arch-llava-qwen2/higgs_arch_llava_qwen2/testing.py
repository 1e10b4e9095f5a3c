"""Random-weight ``llava-qwen2`` model directories for tests and benchmarks, built with mlx-vlm's own classes.

``build_llava_qwen2(path)`` writes what mlx-vlm's converter would write for nanoLLaVA: ``config.json``
(``model_type: llava-qwen2``, the Qwen2 text keys at the top level, a SigLIP ``vision_config``),
``model.safetensors`` saved from an instance of ``mlx_vlm.models.llava_bunny.Model`` and the synthetic
byte-level tokenizer of ``higgs_mlx.testing`` with a ChatML template. ``size="tiny"`` is a few hundred KB
(hidden 64, 2 layers; a 1-layer, 32-wide SigLIP that still cuts a 384x384 image into nanoLLaVA's 729
patches, which mlx-vlm asserts); ``size="nano"`` has nanoLLaVA-1.5's real shapes (Qwen1.5-0.5B text model,
SigLIP-so400m/14 at 384) with synthetic weights and the real vocabulary size, for ``bench/vision.py``.

mlx and mlx-vlm are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import copy
import json
from importlib.resources import files
from pathlib import Path
from typing import Any, Final

__all__ = ["CONFIGS", "build_llava_qwen2", "llava_qwen2_config"]

_TEXT_TINY: Final[dict[str, Any]] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 384, "max_position_embeddings": 4096,
}
_VISION_TINY: Final[dict[str, Any]] = {
    "model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
    "num_attention_heads": 2, "image_size": 384, "patch_size": 14, "layer_norm_eps": 1e-6,
}
# nanoLLaVA-1.5: Qwen1.5-0.5B + SigLIP-so400m-patch14-384 (mlx-vlm's VisionConfig defaults are that tower).
_TEXT_NANO: Final[dict[str, Any]] = {
    "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 24, "num_attention_heads": 16,
    "num_key_value_heads": 16, "vocab_size": 151936, "max_position_embeddings": 32768,
}
_VISION_NANO: Final[dict[str, Any]] = {
    "model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
    "num_attention_heads": 16, "image_size": 384, "patch_size": 14, "layer_norm_eps": 1e-6,
}
#: ``size`` -> (text keys, vision_config).
CONFIGS: Final[dict[str, tuple[dict[str, Any], dict[str, Any]]]] = {
    "tiny": (_TEXT_TINY, _VISION_TINY),
    "nano": (_TEXT_NANO, _VISION_NANO),
}


def llava_qwen2_config(size: str = "tiny", **overrides: Any) -> dict[str, Any]:
    """The ``config.json`` dict of a ``llava-qwen2`` model of ``size`` (``tiny`` or ``nano``)."""
    text, vision = CONFIGS[size]
    config: dict[str, Any] = {
        "model_type": "llava-qwen2",
        "architectures": ["LlavaQwen2ForCausalLM"],
        "auto_map": {},
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "attention_bias": True,
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": vision["hidden_size"],
        "image_token_index": -200,
        **copy.deepcopy(text),
        "vision_config": copy.deepcopy(vision),
    }
    config.update(overrides)
    return config


def build_llava_qwen2(
    path: Path,
    *,
    size: str = "tiny",
    seed: int = 0,
    dtype: str = "float32",
    weight_gain: float = 4.0,
    embedding_std: float = 0.02,
    plain_output: bool = True,
    **config_overrides: Any,
) -> Path:
    """Write a random-weight ``llava-qwen2`` model directory at ``path`` and return ``path``.

    Args:
        path: output directory (created).
        size: ``tiny`` (tests) or ``nano`` (nanoLLaVA-1.5's shapes, for benchmarks).
        seed: seeds the weights and the synthetic vocabulary.
        dtype: dtype of every floating parameter (``float32``, ``float16``, ``bfloat16``).
        weight_gain: factor on the text model's matrices (as ``higgs_mlx.testing`` does), so greedy output
            varies from token to token and a wrong position or image embedding shows.
        embedding_std: standard deviation of the token embeddings.
        plain_output: zero the output rows of special and non-printable tokens (printable greedy text).
        **config_overrides: replace ``config.json`` keys.
    """
    import mlx.core as mx
    from higgs_mlx.testing import _EOS, _PAD, _Vocabulary
    from mlx.utils import tree_flatten, tree_map_with_path
    from mlx_vlm.models.llava_bunny import config as vlm_config
    from mlx_vlm.models.llava_bunny import llava_bunny

    config = llava_qwen2_config(size, **config_overrides)
    vocab_size = int(config["vocab_size"])
    tokens = _Vocabulary.build(min(vocab_size, 4096) if size != "tiny" else vocab_size, seed)
    # The synthetic vocabulary is small; a larger model keeps its special tokens at the same ids.
    config["eos_token_id"] = tokens.ids[_EOS]
    config["pad_token_id"] = tokens.ids[_PAD]

    mx.random.seed(seed)
    configs: Any = vlm_config
    model_config = configs.ModelConfig.from_dict(copy.deepcopy(config))
    model_config.text_config = configs.TextConfig.from_dict(model_config.text_config)
    model_config.vision_config = configs.VisionConfig.from_dict(model_config.vision_config)
    model: Any = llava_bunny.Model(model_config)
    target = getattr(mx, dtype)

    def scale(name: str, value: Any) -> Any:
        if value.ndim >= 2 and name.startswith("language_model.") and "embed_tokens" not in name:
            value = value * weight_gain
        return value.astype(target) if mx.issubdtype(value.dtype, mx.floating) else value

    model.update(tree_map_with_path(scale, model.parameters()))
    embed = model.language_model.model.embed_tokens
    embed.weight = (mx.random.normal(embed.weight.shape) * embedding_std).astype(target)
    head = model.language_model.model.lm_head
    head.weight = embed.weight if config["tie_word_embeddings"] else head.weight
    if plain_output:
        mask = mx.ones((head.weight.shape[0], 1), dtype=target)
        mask[mx.array(tokens.silent_ids())] = 0
        mask[len(tokens.vocab) + len(tokens.ids):] = 0  # ids the synthetic tokenizer does not have
        head.weight = head.weight * mask
        if config["tie_word_embeddings"]:
            embed.weight = head.weight
    mx.eval(model.parameters())

    path.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    if config["tie_word_embeddings"]:
        weights.pop("language_model.model.lm_head.weight", None)
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokens.write(path, _CHATML)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": config["eos_token_id"]}, indent=2))
    return path


# nanoLLaVA's tokenizer template is Qwen1.5's ChatML (string content), also the family's fallback.
_CHATML: Final = files("higgs_arch_llava_qwen2").joinpath("chat_template.jinja").read_text(encoding="utf-8")
