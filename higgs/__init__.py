"""higgs: one endpoint for local MLX models and remote providers, OpenAI and Anthropic APIs both."""

from higgs.errors import ApiError, ConfigError, HiggsError, PluginError, ProviderError
from higgs.hookspecs import hookimpl
from higgs.interfaces import Provider, Router, WireFormat
from higgs.specs import ArchitectureSpec, CommandSpec, FormatSpec, ProviderSpec, RouterSpec

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "ArchitectureSpec",
    "CommandSpec",
    "ConfigError",
    "FormatSpec",
    "HiggsError",
    "PluginError",
    "Provider",
    "ProviderError",
    "ProviderSpec",
    "Router",
    "RouterSpec",
    "WireFormat",
    "__version__",
    "hookimpl",
]
