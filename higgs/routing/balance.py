"""Balancing several providers behind one route: ``ordered``, ``round_robin`` and ``least_busy``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

STRATEGIES = ("ordered", "round_robin", "least_busy")


class Balancer:
    """Orders a route's providers for one request; the rest of the order is the failover order.

    Args:
        names: the route's providers in configured order.
        strategy: ``ordered`` (always the configured order), ``round_robin`` (rotate the first choice per
            request) or ``least_busy`` (fewest requests in flight first, configured order breaks ties).
        busy: returns the in-flight count of a provider by name (``least_busy`` only).
    """

    def __init__(self, names: Sequence[str], strategy: str, busy: Callable[[str], int] | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy '{strategy}' (choose one of {', '.join(STRATEGIES)})")
        self.names = tuple(names)
        self.strategy = strategy
        self._busy = busy or (lambda _name: 0)
        self._counter = itertools.count()

    def order(self) -> tuple[str, ...]:
        """The providers to try for the next request, best first."""
        if len(self.names) < 2 or self.strategy == "ordered":
            return self.names
        if self.strategy == "round_robin":
            start = next(self._counter) % len(self.names)
            return self.names[start:] + self.names[:start]
        ranked = sorted(enumerate(self.names), key=lambda item: (self._busy(item[1]), item[0]))
        return tuple(name for _, name in ranked)


def in_flight(providers: Mapping[str, Any], name: str) -> int:
    """Requests in flight at provider ``name``, from its ``state()`` (0 when unknown)."""
    provider = providers.get(name)
    if provider is None:
        return 0
    try:
        value = provider.state().get("in_flight", 0)
    except Exception:
        return 0
    return int(value) if isinstance(value, int | float) else 0
