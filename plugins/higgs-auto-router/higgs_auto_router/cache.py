"""Remembered decisions, keyed by conversation prefix.

An agent or chat session resends its whole history with every turn. The decision made for a conversation
is stored under the hash of that conversation; a later request whose messages *start with* a stored
conversation gets the same route without asking the classifier, so a session keeps one backend (and that
backend's KV cache stays warm). Keys are taken at message boundaries over what the classifier reads (role
and text of each non-system message), so a client that moves ``cache_control`` marks or re-signs thinking
blocks between turns still hits. "No route fits" is remembered as well; timeouts and failures are not.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CacheHit:
    """A remembered decision: the route (None = no route fits) and how many messages the prefix had."""

    route: str | None
    messages: int


def prefix_keys(items: Sequence[dict[str, str]]) -> list[str]:
    """One key per prefix: ``keys[i]`` identifies ``items[: i + 1]``."""
    digest = hashlib.sha256(b"higgs-auto-router/1")
    keys = []
    for item in items:
        digest.update(json.dumps([item["role"], item["content"]], ensure_ascii=False).encode())
        digest.update(b"\x00")
        keys.append(digest.copy().hexdigest())
    return keys


class DecisionCache:
    """A bounded LRU map from conversation-prefix keys to decisions (thread-safe, cheap)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, str | None] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, keys: Sequence[str]) -> CacheHit | None:
        """The decision stored for the longest prefix among ``keys``, or None."""
        if self.size <= 0:
            return None
        with self._lock:
            for index in range(len(keys) - 1, -1, -1):
                key = keys[index]
                if key in self._entries:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return CacheHit(self._entries[key], index + 1)
            self.misses += 1
        return None

    def store(self, key: str, route: str | None) -> None:
        """Remember ``route`` for the conversation ``key`` identifies."""
        if self.size <= 0:
            return
        with self._lock:
            self._entries[key] = route
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()
