"""The ``higgs`` command line (cyclopts). Commands are registered lazily by import path, so ``higgs --help``
and ``higgs config path`` never import the server, and a broken command module cannot break the others.

Adding a kernel command: write ``higgs/cli/NAME.py`` with a function (or a ``cyclopts.App``) and add one
line to ``KERNEL_COMMANDS`` below. Plugins add commands through the ``higgs_commands`` hook instead.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Sequence
from typing import Any

from cyclopts import App

from higgs import __version__
from higgs.errors import ConfigError, HiggsError, PluginError

app = App(name="higgs", version=__version__,
          help="One endpoint for local MLX models and remote providers, OpenAI and Anthropic APIs both.")
plugins_app = App(name="plugins", help="Inspect installed plugins.")
config_app = App(name="config", help="Read and edit the config file.")
app.command(plugins_app)
app.command(config_app)

#: ``(command name, "module:attribute", help)``; the module may be absent (then the command is not offered).
KERNEL_COMMANDS: list[tuple[str, str, str]] = [
    ("serve", "higgs.cli.serve:serve", "Run the gateway server."),
    ("init", "higgs.cli.init:init", "Write a commented starter config file."),
    ("plugins list", "higgs.cli.plugins:list_plugins", "List installed plugins and what they provide."),
    ("config get", "higgs.cli.config:get", "Print a config value."),
    ("config set", "higgs.cli.config:set_", "Set a config value (validated; comments kept)."),
    ("config path", "higgs.cli.config:path", "Print the config file's path."),
    # Routing engineer: ``higgs route MODEL [--message TEXT]``.
    ("route", "higgs.cli.route:route", "Explain which rule would serve a model."),
    # Operations engineer: daemon, doctor, shellenv, exec.
    ("start", "higgs.cli.daemon:start", "Run higgs in the background for a profile."),
    ("stop", "higgs.cli.daemon:stop", "Stop a profile's background server."),
    ("status", "higgs.cli.daemon:status", "Show each profile's background server."),
    ("doctor", "higgs.cli.doctor:doctor", "Check the installation and configuration."),
    ("shellenv", "higgs.cli.shellenv:shellenv", "Print environment variables that point tools at higgs."),
    ("exec", "higgs.cli.shellenv:exec_command", "Run a command with the higgs environment set."),
]

_SUBAPPS = {"plugins": plugins_app, "config": config_app}
#: Sub-apps made on the fly for plugin commands (``models import``): their help lists their commands.
_UNDESCRIBED: set[str] = set()


def _module_exists(target: str) -> bool:
    module = target.partition(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _register(name: str, target: Any, help_text: str = "") -> None:
    parent, _, leaf = name.rpartition(" ")
    owner = app
    if parent:
        if parent not in _SUBAPPS:
            _SUBAPPS[parent] = App(name=parent)
            _UNDESCRIBED.add(parent)
        owner = _SUBAPPS[parent]
        if parent not in {c for c in app}:
            app.command(owner)
    kwargs = {"help": help_text} if help_text else {}
    owner.command(target, name=leaf, **kwargs)
    if parent in _UNDESCRIBED:  # a sub-app made for plugin commands says what it holds in `higgs --help`
        leaves = sorted(c for c in owner if not c.startswith("-"))
        owner.help = f"{parent.capitalize()}: {', '.join(leaves)}."


for _name, _target, _help in KERNEL_COMMANDS:
    if _module_exists(_target):
        _register(_name, _target, _help)


def _load_plugin_commands() -> None:
    """Add ``higgs_commands`` from installed, enabled plugins; a broken plugin only costs its commands."""
    from higgs.plugins import load_plugins
    from higgs.registry import Registry
    from higgs.settings_loader import load_settings

    try:
        selection = load_settings().settings.plugins
        enabled, disabled = selection.enabled, selection.disabled
    except HiggsError:
        enabled, disabled = [], []
    registry = Registry.build(load_plugins(enabled=enabled, disabled=disabled), strict=False)
    taken = set(app)
    for name, spec in registry.commands.items():
        if name.partition(" ")[0] in taken and " " not in name:
            logging.getLogger("higgs.cli").warning("plugin command '%s' clashes with a built-in command; skipped",
                                                   name)
            continue
        _register(name, spec.target, spec.help)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: run a command; report higgs errors without a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    first = args[0] if args else ""
    if first not in set(app) or first in ("--help", "-h"):
        try:
            _load_plugin_commands()
        except Exception as err:  # listing plugin commands must never lock the user out of the CLI
            print(f"warning: could not load plugin commands: {err}", file=sys.stderr)
    try:
        result = app(args, exit_on_error=False, print_error=True, result_action="return_value")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PluginError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except HiggsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `higgs plugins list | head`: the reader left; say nothing more
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so flushing stdout at exit does not fail again
        return 0
    except Exception as err:
        from cyclopts.exceptions import CycloptsError

        if isinstance(err, CycloptsError):
            return 2
        raise
    return result if isinstance(result, int) else 0
