"""Error events appended to a passed-through stream when the upstream dies mid-way."""

from __future__ import annotations

import json

from higgs.interfaces import WireFormat
from higgs.messages import ErrorInfo


def stream_error_bytes(fmt: WireFormat, info: ErrorInfo) -> bytes:
    """One SSE error event in ``fmt``'s stream dialect.

    Anthropic streams name the event (``event: error``); OpenAI-style streams send a bare ``data:`` line
    with an ``error`` object, which the OpenAI SDKs raise as ``APIError``.
    """
    _, body = fmt.render_error(info)
    data = json.dumps(body, separators=(",", ":"))
    if fmt.name == "anthropic":
        return f"event: error\ndata: {data}\n\n".encode()
    return f"data: {data}\n\n".encode()
