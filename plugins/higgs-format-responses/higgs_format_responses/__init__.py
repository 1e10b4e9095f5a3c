"""higgs-format-responses: the OpenAI Responses API (``/v1/responses``) as a wire format plugin.

Clients such as OpenAI's Codex CLI reach every higgs route, local model and provider through it, and a
provider with ``format = "responses"`` receives translated requests. Settings live in
``[plugins.responses-format]`` (``store_size``: how many finished responses ``previous_response_id`` can
refer to).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from higgs import hookimpl
from higgs.specs import FormatSpec

if TYPE_CHECKING:
    from aiohttp import web

    from higgs.config import HiggsSettings

PLUGIN_NAME = "responses-format"


def _factory() -> object:
    from higgs_format_responses.format import ResponsesFormat

    return ResponsesFormat()


@hookimpl
def higgs_formats() -> Iterable[FormatSpec]:
    """Register the ``responses`` format."""
    return [FormatSpec(name="responses", factory=_factory,  # type: ignore[arg-type]
                       description="OpenAI Responses API: POST /v1/responses, stored responses")]


@hookimpl
def higgs_configure_app(app: web.Application, settings: HiggsSettings) -> None:
    """Apply ``[plugins.responses-format]`` to the format instance of this app."""
    from higgs.server import keys
    from higgs_format_responses.format import ResponsesFormat

    fmt = app.get(keys.FORMATS, {}).get("responses")
    if isinstance(fmt, ResponsesFormat):
        fmt.configure(settings.plugin_section(PLUGIN_NAME))
