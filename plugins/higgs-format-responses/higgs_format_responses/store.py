"""A bounded in-memory store of finished responses, for ``previous_response_id`` and ``GET /v1/responses/{id}``.

Least recently used entries go first once ``max_entries`` is reached. Everything lives in the server
process: a restart forgets every response (documented in ``docs/translation.md``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from higgs.messages import Message, TextBlock

DEFAULT_MAX_ENTRIES = 1000


class ResponsesSettings(BaseModel):
    """``[plugins.responses-format]``: ``store_size`` = how many responses are kept (0 disables storing)."""

    model_config = ConfigDict(extra="forbid")

    store_size: int = Field(DEFAULT_MAX_ENTRIES, ge=0)


@dataclass
class StoredResponse:
    """One finished response and the conversation that led to it (instructions excluded, as OpenAI does)."""

    response: dict[str, Any]
    system: list[TextBlock] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    input_items: list[dict[str, Any]] = field(default_factory=list)


class ResponseStore:
    """An LRU map of response id -> ``StoredResponse``."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: StoredResponse) -> None:
        """Keep ``entry`` under its response id, evicting the least recently used beyond the bound."""
        if self.max_entries <= 0:
            return
        rid = entry.response["id"]
        self._entries[rid] = entry
        self._entries.move_to_end(rid)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, rid: str) -> StoredResponse | None:
        """The entry for ``rid`` (marking it recently used), or None."""
        entry = self._entries.get(rid)
        if entry is not None:
            self._entries.move_to_end(rid)
        return entry

    def delete(self, rid: str) -> bool:
        """Forget ``rid``; False when it was not stored."""
        return self._entries.pop(rid, None) is not None

    def resize(self, max_entries: int) -> None:
        """Change the bound, evicting the oldest entries if needed."""
        self.max_entries = max_entries
        while len(self._entries) > max(max_entries, 0):
            self._entries.popitem(last=False)
