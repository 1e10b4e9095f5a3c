"""Event records passed to lifecycle hooks."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RequestRecord(BaseModel):
    """One finished client request, as metrics see it.

    Times are milliseconds; ``ttft_ms`` is None for non-streamed requests that failed before any token.
    """

    time: float
    request_id: str
    endpoint: str
    format_in: str
    format_out: str | None = None
    model: str = ""
    provider: str | None = None
    route: str | None = None
    routing_method: str | None = None
    local: bool = False
    stream: bool = False
    status: int = 200
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    tokens_per_s: float | None = None
    error_type: str | None = None
    extra: dict[str, object] = Field(default_factory=dict)
