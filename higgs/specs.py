"""Typed, frozen records that registration hooks return.

A plugin yields these from ``higgs_providers``, ``higgs_formats``, ``higgs_routers``,
``higgs_architectures`` and ``higgs_commands``; the registry checks names are unique and attributes each
record to the distribution that registered it. Building a record must be cheap and offline: factories are
called later, at server start, and heavy modules are named by import string, not imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from higgs.config import HiggsSettings, ProviderSettings
    from higgs.interfaces import Provider, ProviderContext, Router, WireFormat


@dataclass(frozen=True)
class ProviderSpec:
    """A kind of provider (``openai``, ``anthropic``, ``ollama``, ``mlx``, ...).

    Attributes:
        name: the kind's name; ``[provider.X] kind = "<name>"`` selects it (by default a provider whose
            name equals a registered kind uses it, else the one registered for its ``format``).
        factory: builds a provider instance from its config section and the shared context.
        local: True for the kind that serves ``[[models]]`` (the local engine); at most one is used.
        formats: wire formats this kind can speak upstream; the first is the kind's default for ``format``.
        description: one line for ``higgs plugins list``.
        server_keys: ``[server]`` keys this kind reads beyond the kernel's own (the local engine's knobs);
            ``serve`` and ``doctor`` do not report them as unknown.
    """

    name: str
    factory: Callable[[ProviderSettings, ProviderContext], Provider]
    local: bool = False
    formats: tuple[str, ...] = ()
    description: str = ""
    server_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class FormatSpec:
    """A wire format (``openai``, ``anthropic``, ...): the HTTP routes it serves and its (de)serializers."""

    name: str
    factory: Callable[[], WireFormat]
    description: str = ""


@dataclass(frozen=True)
class RouterSpec:
    """A routing strategy. Strategies run in ascending ``order``; the first decision wins.

    Built-in orders: auto-router 10, local model names 20, pattern routes 30, default 90.
    """

    name: str
    factory: Callable[[HiggsSettings, Any], Router]
    order: int = 50
    description: str = ""


@dataclass(frozen=True)
class ArchitectureSpec:
    """A local model family: which ``model_type`` values it serves and what higgs must know about it.

    The kernel never imports the model code: ``module`` is an import path to a module that follows
    mlx-lm's contract (``Model`` and ``ModelArgs`` classes), loaded by the local engine when needed.

    Attributes:
        name: family name (``llama``, ``qwen3``, ...).
        model_types: ``config.json`` ``model_type`` values served.
        module: import path of the mlx-lm-style model module.
        reasoning_tags: ``(open, close)`` tags that delimit reasoning, e.g. ``("<think>", "</think>")``.
        tool_parser: name of the tool-call syntax in model output (``hermes``, ``llama3_json``,
            ``mistral``, ``deepseek``, ``phi``, ``gemma``), or None.
        extra_stop_tokens: tokens that end a chat turn besides the tokenizer's EOS.
        chat_template: Jinja template used when the tokenizer carries none.
        thinking_toggle: the chat template honours ``enable_thinking``.
        options: free-form family knowledge for the engine (documented by the architecture plugin).
        vision: import path of the family's vision adapter (a ``higgs_mlx.vision.VisionAdapter`` subclass,
            ``"pkg.module:Class"``) for image + text models; None for text-only families.
    """

    name: str
    model_types: tuple[str, ...]
    module: str
    reasoning_tags: tuple[str, str] | None = None
    tool_parser: str | None = None
    extra_stop_tokens: tuple[str, ...] = ()
    chat_template: str | None = None
    thinking_toggle: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    vision: str | None = None


@dataclass(frozen=True)
class CommandSpec:
    """A CLI subcommand added by a plugin. ``target`` is ``"module:function"`` (imported lazily) or a callable.

    ``name`` may contain a space for a sub-app (``"models import"``).
    """

    name: str
    target: str | Callable[..., Any]
    help: str = ""
