"""higgs-auto-router: a routing strategy that lets a local model pick the route for a conversation.

Registers the ``auto`` strategy at order 10 (before local names, patterns and the default). Registration is
cheap: the router module and the local engine are imported only when the server builds its strategies.
See ``docs/auto-router.md``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from higgs import hookimpl
from higgs.specs import RouterSpec

if TYPE_CHECKING:
    from aiohttp import web
    from higgs.config import HiggsSettings
    from higgs.interfaces import Router

__all__ = ["ORDER", "higgs_routers", "higgs_server_started"]

#: Warm-up tasks in flight (a reference keeps them from being garbage-collected).
_warming: set[asyncio.Task[None]] = set()

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


@hookimpl
def higgs_server_started(app: web.Application, settings: HiggsSettings) -> None:
    """Warm the classifier up in the background once the local engine has started."""
    if not settings.auto_router.enabled:
        return
    from higgs.server import keys

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    for router in app.get(keys.ROUTERS) or []:
        warm_up = getattr(router, "warm_up", None)
        if router.name == "auto" and callable(warm_up):
            task = loop.create_task(warm_up())
            _warming.add(task)
            task.add_done_callback(_warming.discard)
