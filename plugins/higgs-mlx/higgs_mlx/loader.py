"""Finding and loading local models: HF ids in the HF cache, local directories, architecture lookup.

Everything that can go wrong at startup (a missing or corrupt ``config.json``, weights or tokenizer, an
uncached model without a terminal to confirm a download, no architecture plugin for a ``model_type``)
raises ``ModelLoadError`` with a message that names the file, the id or the plugin to install.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from higgs.errors import ConfigError
from higgs.specs import ArchitectureSpec

from higgs_mlx.row_folding import fold_quantized_rows

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tiktoken.model", "vocab.json")


class ModelLoadError(ConfigError):
    """A local model cannot be found or loaded; the message says which file or id and why."""


@dataclass
class LoadedModel:
    """A model ready to serve: the mlx-lm module, its tokenizer wrapper and what we know about it."""

    name: str
    path: Path
    model: Any
    tokenizer: Any
    config: dict[str, Any]
    arch: ArchitectureSpec
    eos_ids: set[int] = field(default_factory=set)
    context_length: int | None = None
    aliases: tuple[str, ...] = ()
    sampling_defaults: dict[str, Any] = field(default_factory=dict)
    #: The family's ``higgs_mlx.vision.VisionAdapter`` for image + text models, else None.
    vision: Any = None

    @property
    def has_chat_template(self) -> bool:
        """Whether chat requests can be rendered (tokenizer template or the architecture's fallback)."""
        return bool(getattr(self.tokenizer, "chat_template", None) or self.arch.chat_template)


def hf_cache_dir() -> str:
    """The HF hub cache huggingface-hub uses (honours ``HF_HOME`` / ``HF_HUB_CACHE``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def imported_models_dir() -> Path:
    """Where ``higgs models import`` puts models: ``$XDG_CACHE_HOME/higgs/models``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "higgs" / "models"


def looks_like_hf_id(path: str) -> bool:
    """``owner/name`` (one slash, not a filesystem path)."""
    if path.startswith(("/", ".", "~")) or (os.sep == "\\" and "\\" in path):
        return False
    parts = path.split("/")
    return len(parts) == 2 and all(parts)


def resolve_model_path(
    path: str, *, assume_yes: bool = False, confirm: Callable[[str], bool] | None = None
) -> Path:
    """Turn ``--model`` / ``[[models]] path`` into a local directory.

    A local directory wins; otherwise an HF id is looked up in the HF cache, and downloaded only after
    the user agreed (``assume_yes`` or a yes on the terminal).

    Raises:
        ModelLoadError: the path does not exist, the id is not cached and cannot be downloaded.
    """
    local = Path(path).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists():
        raise ModelLoadError(f"Model path '{path}' is a file, not a model directory "
                             f"(GGUF files are imported first: higgs models import {path}).")
    imported = imported_models_dir() / path
    if "/" not in path and imported.is_dir():
        return imported
    if not looks_like_hf_id(path):
        raise ModelLoadError(f"Model directory '{path}' does not exist (nor is it a model imported into "
                             f"{imported_models_dir()}).")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(path, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except Exception as err:  # a malformed id or a broken cache entry
        raise ModelLoadError(f"Cannot look up '{path}' in the Hugging Face cache {hf_cache_dir()}: {err}") from err
    if not assume_yes:
        ask = confirm or _ask_on_terminal
        if not ask(f"Model '{path}' is not in the Hugging Face cache ({hf_cache_dir()}). Download it? [y/N] "):
            raise ModelLoadError(
                f"Model '{path}' is not in the Hugging Face cache {hf_cache_dir()} and the download was not "
                "confirmed (run on a terminal, or pass --yes to download without asking)."
            )
    try:
        return Path(snapshot_download(path))
    except Exception as err:
        raise ModelLoadError(
            f"Model '{path}' is not in the Hugging Face cache {hf_cache_dir()} and downloading it failed: "
            f"{type(err).__name__}: {err}"
        ) from err


def _ask_on_terminal(question: str) -> bool:
    if not (sys.stdin and sys.stdin.isatty()):
        return False
    try:
        return input(question).strip().lower() in {"y", "yes"}
    except EOFError:
        return False


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` of a model directory, checked."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(f"Model directory {path} has no config.json ({cfg_file} is missing).")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{cfg_file} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelLoadError(f"{cfg_file} has no 'model_type': it does not describe a model.")
    return config


def find_architecture(config: dict[str, Any], architectures: Mapping[str, ArchitectureSpec],
                      where: Path) -> ArchitectureSpec:
    """The architecture plugin registered for the config's ``model_type``."""
    model_type = config["model_type"]
    spec = architectures.get(model_type)
    if spec is None:
        family = model_type.split("_")[0] if model_type not in ("qwen3_moe", "qwen3_next") else model_type
        raise ModelLoadError(
            f"Model {where} has model_type '{model_type}': install the architecture plugin for {model_type} "
            f"(e.g. pip install higgs-arch-{family.replace('_', '-')})."
        )
    return spec


def _model_classes(spec: ArchitectureSpec, where: Path) -> Callable[[dict[str, Any]], tuple[type, type]]:
    try:
        module = importlib.import_module(spec.module)
    except ImportError as err:
        raise ModelLoadError(f"Architecture plugin '{spec.name}' names module {spec.module}, which cannot be "
                             f"imported: {err}") from err
    if not hasattr(module, "Model") or not hasattr(module, "ModelArgs"):
        raise ModelLoadError(f"Architecture module {spec.module} has no Model/ModelArgs (mlx-lm's contract).")

    def get_classes(config: dict[str, Any]) -> tuple[type, type]:
        return module.Model, module.ModelArgs

    return get_classes


def on_cpu() -> bool:
    """Whether MLX computes on the CPU backend (no Metal, no CUDA device as default)."""
    import mlx.core as mx

    return bool(mx.default_device().type == mx.DeviceType.cpu)


def cast_float_params(model: Any, dtype: Any) -> int:
    """Cast every floating parameter (norms, embeddings, quantization scales/biases) to ``dtype``.

    Packed quantized weights are integers and stay as they are. Returns the number of arrays cast.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    changed: list[tuple[str, Any]] = []
    flat: list[tuple[str, Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    for key, value in flat:
        if mx.issubdtype(value.dtype, mx.floating) and value.dtype != dtype:
            changed.append((key, value.astype(dtype)))
    if changed:
        model.update(tree_unflatten(changed))
        mx.eval(model.parameters())
    return len(changed)


def load_model_dir(path: Path, architectures: Mapping[str, ArchitectureSpec], *, name: str,
                   aliases: tuple[str, ...] = (), float32_on_cpu: bool = True) -> LoadedModel:
    """Load an MLX model directory with the architecture plugin's module and mlx-lm's loader."""
    import mlx.core as mx
    from mlx_lm.tokenizer_utils import load as load_tokenizer
    from mlx_lm.utils import load_model

    config = read_config(path)
    arch = find_architecture(config, architectures, path)
    weights = sorted(path.glob("model*.safetensors")) or sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelLoadError(f"Model directory {path} has no weights (no model*.safetensors file).")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"Model directory {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}).")
    get_classes = _model_classes(arch, path)
    try:
        model, config = load_model(path, get_model_classes=get_classes)
    except Exception as err:
        raise ModelLoadError(f"Cannot load the weights in {path} ({', '.join(w.name for w in weights)}): "
                             f"{type(err).__name__}: {err}") from err
    if float32_on_cpu and on_cpu():
        count = cast_float_params(model, mx.float32)
        log.info("%s: %d parameter arrays cast to float32 for the CPU backend", name, count)
    fold_quantized_rows(model)  # one weight read per batched step (row_folding)
    eos = config.get("eos_token_id")
    try:
        tokenizer = load_tokenizer(path, eos_token_ids=[eos] if isinstance(eos, int) else eos)
    except Exception as err:
        raise ModelLoadError(f"Cannot load the tokenizer in {path}: {type(err).__name__}: {err}") from err
    eos_ids = set(tokenizer.eos_token_ids)
    for token in arch.extra_stop_tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            eos_ids.add(token_id)
    defaults = read_sampling_defaults(path)
    ctx_len = config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
    vision = None
    if arch.vision:
        from higgs_mlx.vision import load_adapter

        vision = load_adapter(arch.vision, path, config)
    return LoadedModel(name=name, path=path, model=model, tokenizer=tokenizer, config=config, arch=arch,
                       eos_ids=eos_ids, context_length=int(ctx_len) if ctx_len else None, aliases=aliases,
                       sampling_defaults=defaults, vision=vision)


def warm_up(lm: LoadedModel) -> None:
    """Run one token through the model so the first request does not pay for kernel set-up."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    token = lm.tokenizer.bos_token_id if lm.tokenizer.bos_token_id is not None else 0
    logits = lm.model(mx.array([[token]]), cache=make_prompt_cache(lm.model))
    mx.eval(logits)


#: Sampling fields a model's ``generation_config.json`` may suggest.
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def read_sampling_defaults(path: Path) -> dict[str, Any]:
    """The model's suggested sampling from ``generation_config.json`` (greedy when it says ``do_sample: false``
    or suggests nothing; a broken file counts as no suggestion)."""
    try:
        gen = json.loads((path / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(gen, dict) or not gen.get("do_sample"):
        return {}
    return {k: gen[k] for k in _SAMPLING_KEYS if isinstance(gen.get(k), (int, float)) and not isinstance(gen[k], bool)}
