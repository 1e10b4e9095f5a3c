"""Every hook is documented in docs/plugins.md with its exact signature, and has a ``test_hook_<name>``."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from higgs import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("higgs_"))


def signature(name: str) -> str:
    fn = getattr(hookspecs, name)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in inspect.signature(fn).parameters.values())
    return f"{name}({params}) -> {inspect.signature(fn).return_annotation}"


def test_every_hookspec_is_collected():
    assert len(HOOKS) >= 9 and "higgs_providers" in HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_signature(hook):
    doc = (ROOT / "docs" / "plugins.md").read_text()
    assert re.search(rf"^### {hook}$", doc, re.M), f"docs/plugins.md has no '### {hook}' section"
    assert f"`{signature(hook)}`" in doc, f"docs/plugins.md does not show `{signature(hook)}`"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    tests = (Path(__file__).parent / "test_hooks.py").read_text()
    assert re.search(rf"^(async def |def )?test_hook_{hook}\b", tests, re.M), f"test_hooks.py lacks test_hook_{hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_has_a_docstring(hook):
    assert (getattr(hookspecs, hook).__doc__ or "").strip()


def test_readme_shows_the_starter_config_verbatim():
    from higgs.cli.init import STARTER_CONFIG

    readme = (ROOT / "README.md").read_text()
    assert f"```toml\n{STARTER_CONFIG}```" in readme


def test_readme_quickstart_commands_exist():
    readme = (ROOT / "README.md").read_text()
    dev = (ROOT / "dev").read_text()
    assert "./dev serve" in readme and "./dev test" in readme
    assert "serve) setup; exec .venv/bin/higgs serve" in dev and "test)  setup;" in dev
    assert "./dev test" in (ROOT / ".ci" / "run").read_text()


def test_readme_links_every_doc():
    readme = (ROOT / "README.md").read_text()
    missing = [doc.name for doc in sorted((ROOT / "docs").glob("*.md")) if f"(docs/{doc.name})" not in readme]
    assert not missing, f"README.md does not link {missing}"
