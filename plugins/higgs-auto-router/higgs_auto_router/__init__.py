"""higgs-auto-router: a routing strategy that lets a local model pick the route for a conversation.

Registers the ``auto`` strategy at order 10 (before local names, patterns and the default). Registration is
cheap: the router module and the local engine are imported only when the server builds its strategies.
See ``docs/auto-router.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from higgs import hookimpl
from higgs.specs import RouterSpec

if TYPE_CHECKING:
    from higgs.config import HiggsSettings
    from higgs.interfaces import Router

__all__ = ["ORDER", "higgs_routers"]

#: Runs before every built-in strategy (local names 20, patterns 30, default 90).
ORDER = 10


def _make_router(settings: HiggsSettings, services: Any) -> Router:
    from higgs_auto_router.router import AutoRouter

    return AutoRouter(settings, services)


@hookimpl
def higgs_routers() -> Iterable[RouterSpec]:
    """The auto-router: classifies chat requests for model ``auto`` (every request with ``force``)."""
    return [RouterSpec(name="auto", factory=_make_router, order=ORDER,
                       description="A local model picks the [[routes]] entry whose description fits the conversation")]
