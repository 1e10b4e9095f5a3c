"""The settings model (schema). Loading, precedence and validation messages live in ``higgs.settings_loader``.

Schema (TOML): ``[server]``, ``[[models]]``, ``[provider.NAME]``, ``[[routes]]``, ``[default]``,
``[auto_router]``, ``[retention]``, ``[logging.metrics]``, ``[plugins]``, ``[vision]``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

DEFAULT_PORT = 8000
DEFAULT_MAX_TOKENS = 32768
DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_BODY = 32 * 1024 * 1024
LOCAL_PROVIDER = "higgs"


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)


#: Browser origins allowed by default: pages served from this machine, any port (``:*``). Not ``*``: any
#: web page the user visits could otherwise drive the local models and spend the upstream keys.
LOOPBACK_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*",
                    "https://localhost:*", "https://127.0.0.1:*", "https://[::1]:*")


class ServerSettings(_Section):
    """``[server]``: where and how the gateway listens."""

    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1)
    timeout: float = Field(DEFAULT_TIMEOUT, gt=0)
    api_key: SecretStr | None = None
    rate_limit: int = Field(0, ge=0, description="requests per minute per client; 0 = off")
    max_body_size: int = Field(DEFAULT_MAX_BODY, ge=1)
    cors_origins: list[str] = Field(default_factory=lambda: list(LOOPBACK_ORIGINS))
    batch: bool | None = None
    assume_yes: bool = Field(False, description="answer yes to confirmations (model downloads); `serve --yes`")


class ModelSettings(_Section):
    """``[[models]]``: a local model by HF id or path, with an optional alias."""

    path: str
    name: str | None = None
    batch: bool | None = None


class ProviderSettings(_Section):
    """``[provider.NAME]``: a remote upstream. Extra keys are validated by the provider plugin."""

    name: str = ""
    kind: str | None = None
    url: str = ""
    format: str = "openai"
    api_key: SecretStr | None = None
    strip_auth: bool = False
    stub_count_tokens: bool = False
    timeout: float | None = None
    default_max_tokens: int = 4096
    models: list[str] = Field(default_factory=list)


class RouteSettings(_Section):
    """``[[routes]]``: a regex on the model name -> provider(s), optional model rewrite."""

    pattern: str | None = None
    provider: str | None = None
    providers: list[str] = Field(default_factory=list)
    model: str | None = None
    name: str | None = None
    description: str | None = None
    fallback: list[str] = Field(default_factory=list)
    strategy: str = "ordered"


class DefaultSettings(_Section):
    """``[default]``: where a request goes when nothing else matches (``higgs`` = local only)."""

    provider: str = LOCAL_PROVIDER


class AutoRouterSettings(_Section):
    """``[auto_router]``: classify requests with a local model to pick a route."""

    enabled: bool = False
    force: bool = False
    model: str | None = None
    timeout_ms: int = Field(2000, ge=1)
    history_tokens: int = Field(2048, ge=16, description="classifier tokens of conversation shown (most recent kept)")
    answer: Literal["constrained", "lenient"] = Field(
        "constrained", description="constrained: decode only a candidate name or 'none'; lenient: parse free text")
    cache_size: int = Field(4096, ge=0, description="decisions remembered by conversation prefix; 0 = off")


class RetentionSettings(_Section):
    """``[retention]``: how long in-memory metrics are kept."""

    enabled: bool = True
    minutes: int = Field(60, ge=1)


class MetricsLogSettings(_Section):
    """``[logging.metrics]``: JSONL request log with size-based rotation."""

    enabled: bool = False
    path: str | None = None
    max_size_mb: float = Field(10, gt=0)
    max_files: int = Field(5, ge=1)


class LoggingSettings(_Section):
    """``[logging]``."""

    level: str = "INFO"
    metrics: MetricsLogSettings = Field(default_factory=MetricsLogSettings)


class VisionSettings(_Section):
    """``[vision]``: how local vision models get their images (``higgs_mlx.images``, docs/vision.md)."""

    allow_private_urls: bool = Field(
        False, description="fetch image URLs that resolve to private, loopback or link-local addresses")
    max_bytes: int = Field(20 * 1024 * 1024, ge=1, description="largest image, inline or fetched (bytes)")
    fetch_timeout: float = Field(10.0, gt=0, description="seconds for a whole image URL fetch")
    max_images: int = Field(16, ge=1, description="most images in one request")
    max_pixels: int = Field(64_000_000, ge=1, description="largest decoded image (width x height)")


class PluginSettings(_Section):
    """``[plugins]``: allow/block lists by entry-point name, plus per-plugin tables."""

    enabled: list[str] = Field(default_factory=list)
    disabled: list[str] = Field(default_factory=list)


class HiggsSettings(_Section):
    """The whole configuration."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    models: list[ModelSettings] = Field(default_factory=list)
    provider: dict[str, ProviderSettings] = Field(default_factory=dict)
    routes: list[RouteSettings] = Field(default_factory=list)
    default: DefaultSettings = Field(default_factory=DefaultSettings)
    auto_router: AutoRouterSettings = Field(default_factory=AutoRouterSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    plugins: PluginSettings = Field(default_factory=PluginSettings)
    vision: VisionSettings = Field(default_factory=VisionSettings)
    #: Where the settings came from (file path), for error messages; not a config key.
    source: str | None = Field(default=None, exclude=True)
    profile: str | None = Field(default=None, exclude=True)

    def plugin_section(self, name: str) -> dict[str, Any]:
        """The ``[plugins.NAME]`` table for a plugin to validate itself, or ``{}``."""
        extra = self.plugins.model_extra or {}
        section = extra.get(name, {})
        return section if isinstance(section, dict) else {}
