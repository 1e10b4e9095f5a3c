"""The synthetic models the benches share: made once by ``make_model.py`` and kept in a cache folder."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def build_model(preset: str, dtype: str, bits: int, root: Path) -> Path:
    """The synthetic model directory (made once, then reused)."""
    import make_model

    out = root / f"{preset}-{dtype}-{bits}bit"
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    config, family = make_model.PRESETS[preset]
    make_model.make_model(dict(config, torch_dtype=dtype), family, out, bits, 64, 0)
    return out


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """``--preset``, ``--model-dir``, ``--dtype``, ``--bits`` and ``--cache``."""
    ap.add_argument("--preset", default="tiny", help="make_model.py preset (tiny, llama-3.2-1b-instruct, qwen3-1.7b)")
    ap.add_argument("--model-dir", help="an MLX model directory instead of a synthetic one")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                    help="float dtype of the synthetic model (default: float32 on the CPU, bfloat16 on a GPU)")
    ap.add_argument("--bits", type=int, default=4, help="quantization bits of the synthetic model (0 = none)")
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    ap.add_argument("--cache", type=Path, default=xdg / "higgs" / "bench-models",
                    help="where synthetic models are kept (default: $XDG_CACHE_HOME/higgs/bench-models)")
