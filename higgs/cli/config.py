"""``higgs config get|set|path``: dotted keys (``server.port``, ``provider.openai.url``, ``routes[0].pattern``).

``set`` edits the file with tomlkit, so comments and layout survive, types the value from the schema
(a string field stays a string, ``8000`` for an int field is an int), and validates the whole result
before writing it (atomically). Secrets are shown as ``**********``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import typing
from pathlib import Path
from typing import Annotated, Any

import tomlkit
from cyclopts import Parameter
from pydantic import BaseModel, SecretStr
from tomlkit.items import AoT, Table

from higgs.config import HiggsSettings
from higgs.errors import ConfigError

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
ConfigOpt = Annotated[Path | None, Parameter(help="Config file to use.")]
ProfileOpt = Annotated[str | None, Parameter(help="Use config.NAME.toml.")]


def parse_key(key: str) -> list[str | int]:
    """``routes[0].pattern`` or ``routes.0.pattern`` -> ``["routes", 0, "pattern"]``."""
    parts: list[str | int] = []
    for name, index in _PART.findall(key):
        if index:
            parts.append(int(index))
        elif name.isdigit() and parts:
            parts.append(int(name))
        else:
            parts.append(name)
    if not parts or "".join(str(p) for p in parts) != re.sub(r"[.\[\]]", "", key):
        raise ConfigError(f"'{key}' is not a valid key (use dots, e.g. server.port or routes[0].pattern)")
    return parts


def get(key: str, *, config: ConfigOpt = None, profile: ProfileOpt = None) -> int:
    """Print the value of KEY in the effective file configuration (defaults included; secrets redacted)."""
    from higgs.settings_loader import load_settings

    settings = load_settings(config=config, profile=profile, use_env=False).settings
    node: Any = settings.model_dump(mode="json")
    for part in parse_key(key):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            print(f"error: {key}: no such key", file=sys.stderr)
            return 1
    print(node if isinstance(node, str) else json.dumps(node))
    return 0


def path(*, config: ConfigOpt = None, profile: ProfileOpt = None) -> int:
    """Print the path of the config file in use (it may not exist yet; see `higgs init`)."""
    from higgs.settings_loader import config_path

    print(config_path(config, profile))
    return 0


def set_(key: str, value: str, *, config: ConfigOpt = None, profile: ProfileOpt = None) -> int:
    """Set KEY to VALUE in the config file, keeping comments; refuses values that do not validate."""
    from higgs.settings_loader import build_settings, config_path, parse_toml

    target = config_path(config, profile)
    if profile is not None and not target.exists():
        raise ConfigError(f"{target}: profile '{profile}' not found; create it with `higgs init --profile {profile}`")
    text = target.read_text(encoding="utf-8") if target.exists() else ""
    doc = tomlkit.parse(text)
    parts = parse_key(key)
    typed = coerce(parts, value)
    _assign(doc, parts, typed, key)
    new_text = tomlkit.dumps(doc)
    settings, warnings = build_settings(parse_toml(new_text, str(target)), str(target))  # raises: file untouched
    problems = _registry_problems(settings)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(new_text)
    os.replace(tmp, target)
    shown = "**********" if _is_secret(parts) else json.dumps(typed) if not isinstance(typed, str) else typed
    print(f"{key} = {shown}  ({target})")
    return 0


def _registry_problems(settings: HiggsSettings) -> list[str]:
    """Formats and provider kinds the installed plugins do not offer (skipped if plugins cannot load)."""
    from higgs.plugins import load_plugins
    from higgs.registry import Registry
    from higgs.settings_loader import registry_problems

    if not settings.provider:
        return []
    try:
        registry = Registry.build(load_plugins(enabled=settings.plugins.enabled, disabled=settings.plugins.disabled),
                                  strict=False)
    except Exception:  # a broken plugin set must not stop editing the file that fixes it
        return []
    return registry_problems(settings, registry.formats, registry.providers)


def coerce(parts: list[str | int], raw: str) -> Any:
    """Type ``raw`` for the field at ``parts``: strings stay strings, others parse as TOML values."""
    if _field_is_str(parts):
        return raw
    try:
        return tomlkit.parse(f"v = {raw}")["v"].unwrap()
    except Exception:
        return raw


def _field_is_str(parts: list[str | int]) -> bool:
    model: Any = HiggsSettings
    annotation: Any = None
    dict_key = False
    for part in parts:
        if isinstance(part, int):
            continue
        if dict_key:  # the NAME of [provider.NAME]
            dict_key = False
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        dict_key = typing.get_origin(annotation) is dict
        model = _inner_model(annotation)
    if typing.get_origin(annotation) in (list, dict):
        return False
    args = typing.get_args(annotation) or (annotation,)
    return any(a in (str, SecretStr) for a in args) and not any(a in (int, float, bool) for a in args)


def _inner_model(annotation: Any) -> Any:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for inner in typing.get_args(candidate):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _assign(doc: Any, parts: list[str | int], value: Any, key: str) -> None:
    node = doc
    for i, part in enumerate(parts[:-1]):
        following = parts[i + 1]
        if isinstance(part, int):
            if not isinstance(node, (AoT, list)):
                raise ConfigError(f"{key}: '{parts[i - 1]}' is not an array")
            if part == len(node):
                node.append(tomlkit.table())
            elif part > len(node):
                raise ConfigError(f"{key}: index {part} is past the end ({len(node)} entries); append with index "
                                  f"{len(node)}")
            node = node[part]
            continue
        if part not in node:
            node[part] = tomlkit.aot() if isinstance(following, int) else tomlkit.table(is_super_table=True)
            if isinstance(following, int) and following != 0:
                raise ConfigError(f"{key}: '{part}' has no entries yet; start with index 0")
        node = node[part]
        if not isinstance(node, (Table, AoT, dict, list)):
            raise ConfigError(f"{key}: '{part}' is a value, not a table")
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: an array entry takes an inline table, e.g. '{{pattern = \"^gpt-\", "
                              f"provider = \"openai\"}}', or set one field: {key}.FIELD")
        if not isinstance(node, (AoT, list)):
            raise ConfigError(f"{key}: '{parts[-2]}' is not an array")
        table = tomlkit.table()
        table.update(value)
        if last == len(node):
            node.append(table)
        elif last < len(node):
            node[last] = table
        else:
            raise ConfigError(f"{key}: index {last} is past the end ({len(node)} entries)")
        return
    _set_key(node, last, value)


def _set_key(node: Any, name: str, value: Any) -> None:
    """``node[name] = value``; a new plain key goes right after the table's last plain key.

    tomlkit appends at the end of the table's body, i.e. after its trailing comments, which in the starter
    file put ``server.api_key`` under the commented-out ``# [[routes]]`` example.
    """
    if name in node or not isinstance(node, Table) or isinstance(value, dict):
        node[name] = value
        return
    body = node.value.body
    plain = [i for i, (key, item) in enumerate(body) if key is not None and not isinstance(item, Table | AoT)]
    if not plain or plain[-1] + 1 >= len(body):
        node[name] = value
        return
    # tomlkit has no public "insert at"; _insert_at exists in every version since 0.11 (_insert_after is
    # gone in 0.15)
    node.value._insert_at(plain[-1] + 1, name, tomlkit.item(value))


def _is_secret(parts: list[str | int]) -> bool:
    return parts[-1] == "api_key"
