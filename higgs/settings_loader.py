"""Loading the configuration: file location, sources, precedence and validation messages.

Precedence, highest first: CLI flags > environment (``HIGGS_*``) > TOML file > defaults. ``--model``
(and ``HIGGS_MODELS``) *add* local models to the file's ``[[models]]``; when both are given the CLI's
list wins over the environment's. Every error names where the bad value came from (the file, the
environment variable or the flag), the key and what is wrong, and all problems are reported at once.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from higgs.config import LOCAL_PROVIDER, HiggsSettings
from higgs.errors import ConfigError

#: ``HIGGS_*`` variable -> settings key.
ENV_KEYS: dict[str, str] = {
    "HIGGS_HOST": "server.host",
    "HIGGS_PORT": "server.port",
    "HIGGS_MAX_TOKENS": "server.max_tokens",
    "HIGGS_API_KEY": "server.api_key",
    "HIGGS_RATE_LIMIT": "server.rate_limit",
    "HIGGS_TIMEOUT": "server.timeout",
}
_PROFILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class EnvOverrides(BaseSettings):
    """The ``HIGGS_*`` environment variables (read by pydantic-settings)."""

    model_config = SettingsConfigDict(env_prefix="HIGGS_", extra="ignore", case_sensitive=False)

    models: Annotated[list[str] | None, NoDecode] = None
    host: str | None = None
    port: int | None = None
    max_tokens: int | None = None
    api_key: SecretStr | None = None
    rate_limit: int | None = None
    timeout: float | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value


@dataclass
class LoadedConfig:
    """The validated settings plus what the operator should hear about them."""

    settings: HiggsSettings
    path: Path
    exists: bool
    warnings: list[str] = field(default_factory=list)

    def warnings_except(self, known: Iterable[str]) -> list[str]:
        """The warnings, less those about keys a loaded plugin reads (``ProviderSpec.server_keys``:
        ``server.max_batch`` is unknown to the kernel's schema but the local engine's setting)."""
        known = set(known)
        return [w for w in self.warnings if not any(f"unknown key '{key}'" in w for key in known)]


# --------------------------------------------------------------------------------------------------
# Where the file is
# --------------------------------------------------------------------------------------------------


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/higgs``, else ``~/.config/higgs``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(os.path.expanduser(base)) / "higgs"


def config_path(config: str | os.PathLike[str] | None = None, profile: str | None = None,
                env: Mapping[str, str] | None = None) -> Path:
    """The file that ``--config``/``--profile`` select (it may not exist yet)."""
    if config is not None and profile is not None:
        raise ConfigError(
            "--config and --profile cannot be used together: --profile NAME selects config.NAME.toml in "
            f"{config_dir(env)}, --config FILE names a file directly"
        )
    if config is not None:
        return Path(expand_path(os.fspath(config)))
    if profile is not None:
        if not _PROFILE_RE.match(profile):
            raise ConfigError(f"--profile: '{profile}' is not a valid profile name (letters, digits, '_', '-', '.')")
        return config_dir(env) / f"config.{profile}.toml"
    return config_dir(env) / "config.toml"


def expand_path(value: str) -> str:
    """Expand ``~`` and ``$VARS`` in a path-like value (HF ids pass through unchanged)."""
    return os.path.expandvars(os.path.expanduser(value))


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_settings(
    *,
    config: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    cli: Mapping[str, Any] | None = None,
    cli_models: Sequence[str] = (),
    enable_plugins: Sequence[str] = (),
    disable_plugins: Sequence[str] = (),
    use_env: bool = True,
) -> LoadedConfig:
    """Read, merge and validate the configuration.

    Args:
        config: ``--config FILE``; must exist.
        profile: ``--profile NAME``; ``config.NAME.toml`` must exist.
        cli: flag values by dotted key (``{"server.port": 9000}``); None values are ignored.
        cli_models: ``--model`` values, added to the file's models.
        enable_plugins: ``--plugin`` names (added to ``[plugins] enabled``, removed from ``disabled``).
        disable_plugins: ``--no-plugin`` names (the reverse).
        use_env: read ``HIGGS_*`` variables (tests can switch it off).

    Raises:
        ConfigError: listing every problem with its source, key and cause.
    """
    path = config_path(config, profile)
    exists = path.is_file()
    if not exists and config is not None:
        raise ConfigError(f"{path}: config file not found (given with --config)")
    if not exists and profile is not None:
        raise ConfigError(f"{path}: profile '{profile}' not found; create it with `higgs init --profile {profile}`")
    data = read_toml(path) if exists else {}
    origins: dict[str, str] = {}
    file_models = len(data.get("models", []) or []) if isinstance(data.get("models"), list) else 0

    if use_env:
        try:
            env = EnvOverrides()
        except ValidationError as err:
            problems = [f"environment variable HIGGS_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                        for e in err.errors()]
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from err
        for var, key in ENV_KEYS.items():
            value = getattr(env, key.split(".")[1])
            if value is not None:
                _set(data, key, value.get_secret_value() if isinstance(value, SecretStr) else value)
                origins[key] = f"environment variable {var}"
        extra_models = list(cli_models) or list(env.models or [])
        models_origin = "--model" if cli_models else "environment variable HIGGS_MODELS"
    else:
        extra_models, models_origin = list(cli_models), "--model"

    for key, value in (cli or {}).items():
        if value is not None:
            _set(data, key, value)
            origins[key] = "--" + key.rsplit(".", 1)[-1].replace("_", "-")
    if extra_models:
        models = data.setdefault("models", [])
        if not isinstance(models, list):
            raise ConfigError(f"{path}: models: must be an array of tables ([[models]])")
        known = {m.get("path") for m in models if isinstance(m, dict)}
        for model in extra_models:
            if model not in known:
                origins[f"models[{len(models)}]"] = models_origin
                models.append({"path": model})
                known.add(model)
    _select_plugins(data, enable_plugins, disable_plugins)

    settings, warnings = build_settings(data, str(path), origins=origins, file_models=file_models)
    settings.profile = profile
    return LoadedConfig(settings=settings, path=path, exists=exists, warnings=warnings)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; syntax errors become ``ConfigError`` naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror or err}") from err
    return parse_toml(text, str(path))


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text; syntax errors become ``ConfigError``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: invalid TOML: {err}") from err


def build_settings(
    data: dict[str, Any], source: str, *, origins: Mapping[str, str] | None = None, file_models: int | None = None
) -> tuple[HiggsSettings, list[str]]:
    """Validate merged config data into ``HiggsSettings``; return it with the warnings (unknown keys).

    Raises:
        ConfigError: schema or semantic problems, all of them, each with its source and key.
    """
    origins = dict(origins or {})
    try:
        settings = HiggsSettings.model_validate(data)
    except ValidationError as err:
        problems = [_describe_error(e, source, origins) for e in err.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from err
    settings.source = source
    for name, provider in settings.provider.items():
        provider.name = name
    for model in settings.models:
        model.path = expand_path(model.path)
    if settings.logging.metrics.path:
        settings.logging.metrics.path = expand_path(settings.logging.metrics.path)
    problems = [f"{_origin(key, source, origins)}: {key}: {msg}" for key, msg in semantic_problems(settings)]
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return settings, [f"{source}: unknown key '{key}' (ignored)" for key in unknown_keys(settings)]


def semantic_problems(settings: HiggsSettings) -> list[tuple[str, str]]:
    """``(key, problem)`` pairs for rules the schema alone cannot express."""
    problems: list[tuple[str, str]] = []
    known = {LOCAL_PROVIDER, *settings.provider}
    for name in settings.provider:
        if name == LOCAL_PROVIDER:
            problems.append((f"provider.{name}", f"the name '{LOCAL_PROVIDER}' is reserved for the local "
                                                 "provider; choose another name"))
    seen_names: dict[str, int] = {}
    for i, route in enumerate(settings.routes):
        key = f"routes[{i}]"
        if not route.pattern:
            if not (route.name and route.description):  # name + description, no pattern: auto-router only
                problems.append((f"{key}.pattern", "missing: every route needs a regular expression on the model "
                                                   "name (or a name and a description, for the auto-router only)"))
        else:
            try:
                re.compile(route.pattern)
            except re.error as err:
                problems.append((f"{key}.pattern", f"invalid regular expression {route.pattern!r}: {err}"))
        targets = ([route.provider] if route.provider else []) + list(route.providers)
        if not targets:
            problems.append((f"{key}.provider", "missing: a route must name the provider that serves it"))
        for target in [*targets, *route.fallback]:
            if target not in known:
                problems.append((f"{key}.provider", f"unknown provider '{target}' (known: {', '.join(sorted(known))})"))
        if route.description and not route.name:
            problems.append((f"{key}.description", "a description needs a name: set routes[].name as well"))
        if route.name:
            if route.name in seen_names:
                problems.append((f"{key}.name", f"duplicate route name '{route.name}' "
                                                f"(also routes[{seen_names[route.name]}])"))
            seen_names.setdefault(route.name, i)
    problems += auto_router_problems(settings)
    if settings.default.provider not in known:
        problems.append(("default.provider", f"unknown provider '{settings.default.provider}' "
                                             f"(known: {', '.join(sorted(known))})"))
    names: dict[str, int] = {}
    for i, model in enumerate(settings.models):
        alias = model.name or model.path
        if alias in names:
            problems.append((f"models[{i}]", f"duplicate model '{alias}' (also models[{names[alias]}])"))
        names.setdefault(alias, i)
    return problems


#: Answers the auto-router reserves for "no route fits"; candidate routes cannot use them as names.
AUTO_ROUTER_RESERVED = ("none", "other")
_CONTROL = re.compile(r'["\\\x00-\x1f]')


def auto_router_problems(settings: HiggsSettings) -> list[tuple[str, str]]:
    """``[auto_router]`` rules: candidate route names the classifier can answer with, and a classifier model."""
    problems: list[tuple[str, str]] = []
    candidates = [(i, r) for i, r in enumerate(settings.routes) if r.name and r.description]
    for i, route in candidates:
        name = route.name or ""
        if name.strip().lower() in AUTO_ROUTER_RESERVED:
            problems.append((f"routes[{i}].name", f"'{name}' is the auto-router's answer for 'no route fits'; "
                                                  "choose another name for a route with a description"))
        elif not name.strip() or _CONTROL.search(name):
            problems.append((f"routes[{i}].name", f"{name!r}: a route the auto-router can pick needs a name "
                                                  "without quotes, backslashes or control characters"))
    auto = settings.auto_router
    if not auto.enabled:
        return problems
    if auto.model is None:
        if settings.models:
            problems.append(("auto_router.model", "missing: name the [[models]] entry (name or path) that "
                                                  "classifies requests, e.g. katanemo/Arch-Router-1.5B"))
    else:
        served = {n for m in settings.models for n in (m.name, m.path) if n} or {"default"}
        if not {auto.model, expand_path(auto.model)} & served:
            listed = ", ".join(sorted(served))
            problems.append(("auto_router.model", f"'{auto.model}' is not a local model; add it as a [[models]] "
                                                  f"entry (path = ...) or use one of: {listed}"))
    return problems


def registry_problems(settings: HiggsSettings, formats: Collection[str], kinds: Collection[str]) -> list[str]:
    """Problems only the loaded plugins can reveal: unknown formats and provider kinds."""
    source = settings.source or "config"
    problems = []
    for name, provider in settings.provider.items():
        if provider.format not in formats:
            listed = ", ".join(sorted(formats)) or "none loaded"
            problems.append(f"{source}: provider.{name}.format: unknown format '{provider.format}' "
                            f"(known: {listed})")
        if provider.kind and provider.kind not in kinds:
            listed = ", ".join(sorted(kinds)) or "none installed"
            problems.append(f"{source}: provider.{name}.kind: unknown provider kind '{provider.kind}' "
                            f"(installed: {listed})")
    return problems


def unknown_keys(settings: BaseModel, prefix: str = "") -> list[str]:
    """Dotted keys the schema does not know (kept, but probably typos)."""
    found: list[str] = []
    for key in (settings.model_extra or {}):
        if prefix in ("plugins.",):
            continue  # [plugins.NAME] tables belong to plugins
        if prefix.startswith("provider."):
            continue  # validated by the provider plugin
        found.append(prefix + key)
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            found += unknown_keys(value, f"{prefix}{name}.")
        elif isinstance(value, list):
            found += [k for i, v in enumerate(value) if isinstance(v, BaseModel)
                      for k in unknown_keys(v, f"{prefix}{name}[{i}].")]
        elif isinstance(value, dict):
            found += [k for n, v in value.items() if isinstance(v, BaseModel)
                      for k in unknown_keys(v, f"{prefix}{name}.{n}.")]
    return found


def redacted(settings: HiggsSettings) -> dict[str, Any]:
    """The settings as plain data with every secret shown as ``**********``."""
    return settings.model_dump(mode="json")  # SecretStr dumps as '**********' in json mode


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def _select_plugins(data: dict[str, Any], enable: Sequence[str], disable: Sequence[str]) -> None:
    if not enable and not disable:
        return
    section = data.setdefault("plugins", {})
    enabled = [n for n in section.get("enabled", []) if n not in disable]
    disabled = [n for n in section.get("disabled", []) if n not in enable]
    section["enabled"] = enabled + [n for n in enable if n not in enabled]
    section["disabled"] = disabled + [n for n in disable if n not in disabled]


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _origin(key: str, source: str, origins: Mapping[str, str]) -> str:
    for candidate in (key, key.split(".")[0] if "[" in key else ""):
        if candidate and candidate in origins:
            return origins[candidate]
    return source


def _describe_error(error: Mapping[str, Any], source: str, origins: Mapping[str, str]) -> str:
    key = _loc(error["loc"])
    msg = str(error["msg"])
    if error.get("type") == "missing":
        msg = "missing required key"
    elif "input" in error and not isinstance(error["input"], (dict, list)) and "secret" not in key and "key" not in key:
        msg = f"{msg} (got {error['input']!r})"
    return f"{_origin(key, source, origins)}: {key}: {msg}"
