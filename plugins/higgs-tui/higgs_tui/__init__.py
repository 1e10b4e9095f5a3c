"""higgs-tui: a live terminal dashboard for a running higgs server (``higgs attach``).

Registration only: the dashboard and textual are imported when the command runs.
"""

from __future__ import annotations

from higgs.hookspecs import hookimpl
from higgs.specs import CommandSpec


@hookimpl
def higgs_commands() -> list[CommandSpec]:
    """``higgs attach [--profile NAME] [--url URL]``: watch a running server."""
    return [CommandSpec(name="attach", target="higgs_tui.cli:attach",
                        help="Open the live dashboard of a running higgs server.")]
