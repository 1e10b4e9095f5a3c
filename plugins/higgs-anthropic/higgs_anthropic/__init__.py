"""higgs provider kind ``anthropic``: Anthropic's Messages API."""

from __future__ import annotations

from typing import ClassVar

from higgs.hookspecs import hookimpl
from higgs.remote import RemoteProvider
from higgs.specs import ProviderSpec

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider", "higgs_providers"]

#: Sent as ``anthropic-version`` when the client sent none (the API rejects requests without it).
ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(RemoteProvider):
    """An Anthropic-format upstream: ``x-api-key`` auth, ``anthropic-version`` default, ``max_tokens`` required.

    Requests translated from formats where ``max_tokens`` is optional get ``default_max_tokens``.
    """

    kind: ClassVar[str] = "anthropic"
    default_url: ClassVar[str] = "https://api.anthropic.com"
    default_format: ClassVar[str] = "anthropic"
    default_headers: ClassVar[dict[str, str]] = {"anthropic-version": ANTHROPIC_VERSION}
    requires_max_tokens: ClassVar[bool] = True


@hookimpl
def higgs_providers() -> list[ProviderSpec]:
    """Register the ``anthropic`` provider kind."""
    return [ProviderSpec(name="anthropic", factory=AnthropicProvider, formats=("anthropic",),
                         description="Anthropic Messages API (and Anthropic-compatible servers)")]
