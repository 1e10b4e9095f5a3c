"""higgs-tui: a live terminal dashboard for a running higgs server (``higgs attach``).

Registration only: the dashboard and textual are imported when the command runs.
"""

from __future__ import annotations

from typing import Any

from higgs.hookspecs import hookimpl
from higgs.specs import CommandSpec


@hookimpl
def higgs_commands() -> list[CommandSpec]:
    """``higgs attach [--profile NAME] [--url URL]``: watch a running server."""
    return [CommandSpec(name="attach", target="higgs_tui.cli:attach",
                        help="Open the live dashboard of a running higgs server.")]


@hookimpl
def higgs_serve_frontend(app: Any, host: str, port: int, settings: Any) -> int:
    """``higgs serve --tui``: the server on a background thread, the dashboard in front."""
    from higgs_tui.cli import serve_with_dashboard

    return serve_with_dashboard(app, host, port, settings)
