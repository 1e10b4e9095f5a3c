"""``higgs plugins list``: every installed plugin, its package, version, status and what it provides."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter

from higgs.errors import HiggsError

_KINDS = ("formats", "providers", "strategies", "architectures", "commands")


def list_plugins(
    *,
    json_: Annotated[bool, Parameter(name="--json", help="Machine-readable output.")] = False,
    config: Annotated[Path | None, Parameter(help="Config file whose [plugins] selection applies.")] = None,
    profile: Annotated[str | None, Parameter(help="Config profile whose [plugins] selection applies.")] = None,
) -> int:
    """List installed plugins (entry-point group ``higgs``), enabled, disabled or broken."""
    from higgs.plugins import load_plugins
    from higgs.registry import Registry
    from higgs.settings_loader import load_settings

    enabled: list[str] = []
    disabled: list[str] = []
    try:
        selection = load_settings(config=config, profile=profile).settings.plugins
        enabled, disabled = selection.enabled, selection.disabled
    except HiggsError as err:
        print(f"warning: config not applied: {err}", file=sys.stderr)
    plugins = load_plugins(enabled=enabled, disabled=disabled)
    Registry.build(plugins, strict=False)
    infos = sorted(plugins.infos.values(), key=lambda i: i.name)
    if json_:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return 0
    rows = [("NAME", "PACKAGE", "VERSION", "STATUS", "PROVIDES")]
    for info in infos:
        provides = "; ".join(f"{k}: {', '.join(info.provides[k])}" for k in _KINDS if info.provides.get(k))
        rows.append((info.name, info.package or "-", info.version or "-", info.status, provides or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    for info in infos:
        if info.error:
            print(f"\n{info.name}: {info.error}")
    return 0
