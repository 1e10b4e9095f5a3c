"""Plugin loading, selection, broken plugins, the registry's conflict errors, and ``higgs plugins list``."""

from __future__ import annotations

import json
import sys
import types

import pytest

from higgs import hookimpl
from higgs.cli import main
from higgs.errors import PluginError
from higgs.plugins import load_plugins
from higgs.registry import Registry
from higgs.specs import ArchitectureSpec, CommandSpec, FormatSpec, ProviderSpec, RouterSpec
from higgs.testing import FakeProvider


def _module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook, value in hooks.items():
        def impl(value=value):
            return value
        impl.__name__ = hook
        setattr(module, hook, hookimpl(impl))
    return module


def test_explicit_plugins_only_no_entry_points():
    acme = _module("acme", higgs_providers=[ProviderSpec(name="acme", factory=lambda s, c: FakeProvider())])
    loaded = load_plugins(load_entrypoints=False, plugins=[acme])
    assert loaded.loaded == ["acme"]
    registry = Registry.build(loaded)
    assert list(registry.providers) == ["acme"]
    assert registry.owner("providers", "acme") == "acme"
    assert loaded.info("acme").provides == {"providers": ["acme"]}


def test_every_registration_hook_is_indexed():
    arch = ArchitectureSpec(name="llama", model_types=("llama", "mistral"), module="mlx_lm.models.llama")
    plugin = _module(
        "multi",
        higgs_providers=[ProviderSpec(name="p", factory=lambda s, c: FakeProvider())],
        higgs_formats=[FormatSpec(name="f", factory=object)],
        higgs_routers=[RouterSpec(name="r", factory=lambda s, v: None)],
        higgs_architectures=[arch],
        higgs_commands=[CommandSpec(name="c", target="x:y")],
    )
    registry = Registry.build(load_plugins(load_entrypoints=False, plugins=[plugin]))
    assert set(registry.providers) == {"p"} and set(registry.formats) == {"f"}
    assert set(registry.routers) == {"r"} and set(registry.commands) == {"c"}
    assert registry.architectures == {"llama": arch, "mistral": arch}  # keyed by each model_type


def test_duplicate_names_raise_naming_both_plugins():
    one = _module("one", higgs_formats=[FormatSpec(name="openai", factory=object)])
    two = _module("two", higgs_formats=[FormatSpec(name="openai", factory=object)])
    with pytest.raises(PluginError, match=r"format 'openai' is registered twice: by plugin 'one'.*plugin 'two'"):
        Registry.build(load_plugins(load_entrypoints=False, plugins=[one, two]))
    loaded = load_plugins(load_entrypoints=False, plugins=[one, two])
    Registry.build(loaded, strict=False)  # plugins list: report instead of failing
    assert loaded.info("two").status == "error" and "registered twice" in loaded.info("two").error


def test_duplicate_model_type_across_architecture_plugins():
    a = _module("a", higgs_architectures=[ArchitectureSpec(name="x", model_types=("llama",), module="m")])
    b = _module("b", higgs_architectures=[ArchitectureSpec(name="y", model_types=("llama",), module="m")])
    with pytest.raises(PluginError, match="model_type 'llama'"):
        Registry.build(load_plugins(load_entrypoints=False, plugins=[a, b]))


def test_registration_hook_that_raises_drops_only_that_plugin():
    def boom():
        raise RuntimeError("kaput")

    bad = types.ModuleType("bad")
    bad.higgs_providers = hookimpl(boom)
    boom.__name__ = "higgs_providers"
    good = _module("good", higgs_providers=[ProviderSpec(name="good", factory=lambda s, c: FakeProvider())])
    loaded = load_plugins(load_entrypoints=False, plugins=[bad, good])
    registry = Registry.build(loaded)
    assert list(registry.providers) == ["good"]
    assert loaded.info("bad").status == "error" and "RuntimeError: kaput" in loaded.info("bad").error


def test_wrong_record_type_is_an_error():
    bad = _module("bad", higgs_providers=["not a spec"])
    loaded = load_plugins(load_entrypoints=False, plugins=[bad])
    Registry.build(loaded)
    assert "expected ProviderSpec" in loaded.info("bad").error


# -- entry points (the installed example plugin and the built-ins) ------------------------------------


def test_entry_points_discover_builtins_and_the_example_plugin():
    loaded = load_plugins()
    registry = Registry.build(loaded, strict=False)
    example = loaded.info("example")
    assert example.status == "enabled" and example.package == "higgs-example" and example.version == "0.1.0"
    assert registry.providers["example"].name == "example"
    assert loaded.info("openai-format").package == "higgs"
    assert {"openai", "anthropic"} <= set(registry.formats)


def test_disabled_plugins_are_not_imported():
    sys.modules.pop("higgs_example", None)
    loaded = load_plugins(disabled=["example"])
    assert loaded.info("example").status == "disabled"
    assert "higgs_example" not in sys.modules


def test_star_blocks_everything_but_enabled():
    loaded = load_plugins(disabled=["*"], enabled=["example"])
    assert loaded.loaded == ["example"]
    assert all(i.status == "disabled" for n, i in loaded.infos.items() if n != "example")


def test_broken_entry_point_is_reported_not_fatal(monkeypatch):
    import importlib.metadata as md

    broken = md.EntryPoint(name="broken", value="higgs_no_such_module_xyz", group="higgs")
    real = md.entry_points

    def fake_entry_points(**kwargs):
        return [*real(**kwargs), broken]

    monkeypatch.setattr("higgs.plugins.importlib.metadata.entry_points", fake_entry_points)
    loaded = load_plugins()
    info = loaded.info("broken")
    assert info.status == "error"
    assert "ModuleNotFoundError" in info.error and "higgs_no_such_module_xyz" in info.error
    loaded.check_required()  # not enabled explicitly: fine
    required = load_plugins(enabled=["broken"])
    with pytest.raises(PluginError, match="plugin 'broken' was enabled but failed to load"):
        required.check_required()


def test_enabling_a_plugin_that_is_not_installed_is_an_error():
    loaded = load_plugins(load_entrypoints=False, enabled=["nope"])
    with pytest.raises(PluginError, match=r"'nope' was enabled.*not installed"):
        loaded.check_required()


# -- higgs plugins list ---------------------------------------------------------------------------------


def test_plugins_list_json(capsys):
    assert main(["plugins", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["example"]["package"] == "higgs-example"
    assert rows["example"]["provides"] == {"providers": ["example"], "commands": ["example-hello"]}
    assert rows["openai-format"]["provides"]["formats"] == ["openai"]
    assert rows["routing"]["status"] == "enabled"


def test_plugins_list_table_honours_config_selection(capsys, _isolated_config):
    _isolated_config.mkdir(parents=True)
    (_isolated_config / "config.toml").write_text('[plugins]\ndisabled = ["example"]\n')
    assert main(["plugins", "list"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("example "))
    assert "higgs-example" in line and "disabled" in line
    assert out.splitlines()[0].split() == ["NAME", "PACKAGE", "VERSION", "STATUS", "PROVIDES"]


def test_plugin_command_reaches_the_cli(capsys):
    assert main(["example-hello", "--name", "tests"]) == 0
    assert "hello, tests, from higgs-example" in capsys.readouterr().out


def test_provider_section_with_only_a_format_uses_the_kind_named_after_it():
    def make(s, c):
        return FakeProvider()

    echo = _module("echo", higgs_providers=[ProviderSpec(name="echo", factory=make, formats=("openai",))])
    real = _module("real", higgs_providers=[ProviderSpec(name="openai", factory=make, formats=("openai",))])
    registry = Registry.build(load_plugins(load_entrypoints=False, plugins=[echo, real]))
    assert registry.provider_spec_for("vllm", None, "openai").name == "openai"  # not the first loaded
    assert registry.provider_spec_for("echo", None, "openai").name == "echo"  # a kind named like the section
    assert registry.provider_spec_for("x", "echo", "openai").name == "echo"  # an explicit kind


def test_plugins_list_into_a_closed_pipe_ends_quietly(monkeypatch, tmp_path):
    """``higgs plugins list | head -1``: the reader leaves, higgs exits 0 without a traceback."""
    import sys

    from higgs.cli import main

    sink = open(tmp_path / "out", "w")  # a real descriptor for the dup2 on the way out

    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            pass

        def fileno(self) -> int:
            return sink.fileno()

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    try:
        assert main(["plugins", "list"]) == 0
    finally:
        sink.close()
