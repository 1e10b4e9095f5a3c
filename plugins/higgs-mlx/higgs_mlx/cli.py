"""``higgs models import FILE.gguf`` and ``higgs models list``."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from higgs_mlx.default_model import DEFAULT_MODEL_NAME, models_dir
from higgs_mlx.gguf_import import IMPORT_MARKER, GGUFImportError, import_gguf


def model_slug(stem: str) -> str:
    """A directory-safe model name from a file stem (``SmolLM2-135M.Q4_1`` -> ``smollm2-135m-q4_1``)."""
    return re.sub(r"[^a-z0-9_]+", "-", stem.lower()).strip("-") or "model"


def import_command(
    file: Path,
    /,
    *,
    name: Annotated[str | None, Parameter(help="Model name (directory under the higgs model cache).")] = None,
    bits: Annotated[int | None, Parameter(name=["--bits", "-q"],
                                          help="Re-quantize every matrix to 4 or 8 bits (default: keep the "
                                               "file's quantization where MLX can represent it exactly).")] = None,
    force: Annotated[bool, Parameter(help="Replace an existing model of that name.")] = False,
) -> int:
    """Import a llama.cpp / Ollama GGUF file into an MLX model directory that --model accepts."""
    target = name or model_slug(file.stem)
    dest = models_dir() / target
    if dest.exists() and not force:
        print(f"error: {dest} already exists (use --force to replace it)", file=sys.stderr)
        return 1
    count = 0

    def progress(_tensor: str) -> None:
        nonlocal count
        count += 1
        if sys.stderr.isatty():
            print(f"\rconverting tensor {count}", end="", file=sys.stderr, flush=True)

    try:
        import_gguf(file, dest, bits=bits, progress=progress)
    except GGUFImportError as err:
        print(f"\nerror: cannot import {file}: {err}", file=sys.stderr)
        return 1
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"Imported {file.name} ({count} tensors) into {dest}")
    print(f"Serve it with: higgs serve --model {target}")
    return 0


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _architectures() -> dict[str, Any]:
    from higgs.plugins import load_plugins
    from higgs.registry import Registry

    try:
        return dict(Registry.build(load_plugins(), strict=False).architectures)
    except Exception:  # listing must work even with a broken plugin set
        return {}


def _describe(path: Path, arches: dict[str, Any]) -> tuple[str, str]:
    try:
        config = json.loads((path / "config.json").read_text())
        model_type = str(config.get("model_type", "?"))
    except (OSError, ValueError):
        return "?", "no valid config.json"
    if model_type not in arches:
        return model_type, f"needs higgs-arch plugin for {model_type}"
    if not list(path.glob("*.safetensors")):
        return model_type, "no weights"
    return model_type, "loadable"


def collect_models() -> list[dict[str, Any]]:
    """Imported models (higgs cache) and MLX-looking models in the Hugging Face cache."""
    arches = _architectures()
    rows: list[dict[str, Any]] = []
    root = models_dir()
    if root.is_dir():
        for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            model_type, status = _describe(path, arches)
            source = ""
            marker = path / IMPORT_MARKER
            if marker.is_file():
                source = json.loads(marker.read_text()).get("source", "")
            name = path.name + (" (default)" if path.name == DEFAULT_MODEL_NAME else "")
            rows.append({"name": name, "where": "higgs", "path": str(path), "model_type": model_type,
                         "size": _dir_size(path), "status": status, "source": source})
    try:
        from huggingface_hub import scan_cache_dir

        repos = scan_cache_dir().repos
    except Exception:  # no HF cache yet
        repos = frozenset()
    for repo in sorted(repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for revision in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)[:1]:
            model_type, status = _describe(Path(revision.snapshot_path), arches)
            rows.append({"name": repo.repo_id, "where": "hf-cache", "path": str(revision.snapshot_path),
                         "model_type": model_type, "size": repo.size_on_disk, "status": status, "source": ""})
    return rows


def list_command(
    *, json_: Annotated[bool, Parameter(name="--json", help="Machine-readable output.")] = False
) -> int:
    """List local models: imported into higgs's cache and found in the Hugging Face cache."""
    rows = collect_models()
    if json_:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"No local models yet (higgs cache: {models_dir()}). Import one with: higgs models import FILE.gguf")
        return 0
    table = [("NAME", "WHERE", "TYPE", "SIZE", "STATUS")]
    table += [(r["name"], r["where"], r["model_type"], f"{r['size'] / 1e6:.0f} MB", r["status"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0
