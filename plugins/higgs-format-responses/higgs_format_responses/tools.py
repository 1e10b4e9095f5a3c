"""Responses tool definitions <-> canonical flat tools, keeping namespaces and custom tools reversible.

The Responses API nests tools in ``namespace`` groups (Codex sends them inside ``additional_tools`` input
items) and has ``custom`` tools whose input is free text constrained by a Lark or regex grammar. Other
formats know only flat function tools, so:

- a namespaced tool becomes the flat name ``namespace__name`` (the same join Codex uses when a boundary
  cannot keep the split), and the client gets its ``name`` and ``namespace`` back on every call;
- a custom tool becomes a function tool with one string parameter, ``input``; its grammar goes into the
  description so the model still sees it, and calls come back as ``custom_tool_call`` items.

``ToolMap`` remembers, per request, which flat name stands for which client tool.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from higgs.errors import InvalidRequestError
from higgs.messages import Tool, ToolChoice

log = logging.getLogger("higgs.formats.responses")

#: Codex's delimiter between namespace and name in a flattened tool name.
NAMESPACE_DELIMITER = "__"
#: Hosted tools only OpenAI runs; a translated upstream cannot, so they are dropped (debug log).
HOSTED_TOOLS = frozenset({
    "web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11", "file_search",
    "computer_use_preview", "computer_use", "code_interpreter", "image_generation", "mcp", "local_shell", "shell",
    "apply_patch", "tool_search",
})


def flat_name(namespace: str | None, name: str) -> str:
    """The flat tool name for ``name`` in ``namespace`` (``ns__name``), or ``name`` itself."""
    if not namespace:
        return name
    return f"{namespace.rstrip('_')}{NAMESPACE_DELIMITER}{name.lstrip('_')}"


@dataclass(frozen=True)
class ClientTool:
    """What the client called a tool: its name, namespace and kind (``function`` or ``custom``)."""

    name: str
    namespace: str | None = None
    kind: str = "function"


@dataclass
class ToolMap:
    """Flat canonical names -> the client's tools, for one request."""

    by_flat: dict[str, ClientTool] = field(default_factory=dict)

    def add(self, tool: ClientTool) -> str:
        """Register ``tool`` and return its flat name."""
        flat = flat_name(tool.namespace, tool.name)
        self.by_flat.setdefault(flat, tool)
        return flat

    def client_tool(self, flat: str) -> ClientTool:
        """The client's view of a flat name (a plain function tool when unknown)."""
        return self.by_flat.get(flat) or ClientTool(name=flat)

    def dump(self) -> dict[str, list[Any]]:
        """A JSON-ready form, kept in the canonical request between parse and render."""
        return {flat: [t.name, t.namespace, t.kind] for flat, t in self.by_flat.items()}

    @classmethod
    def load(cls, data: Any) -> ToolMap:
        """Rebuild from ``dump()`` output (tolerates anything else as empty)."""
        result = cls()
        if isinstance(data, dict):
            for flat, value in data.items():
                if isinstance(value, list) and len(value) == 3:
                    result.by_flat[flat] = ClientTool(name=value[0], namespace=value[1], kind=value[2])
        return result


def _custom_description(tool: dict[str, Any]) -> str:
    """A custom tool's description, with its grammar spelled out for a model that only knows JSON tools."""
    description = str(tool.get("description") or "")
    fmt = tool.get("format")
    note = "Call this tool with a single string argument `input` holding the raw input text."
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        syntax = fmt.get("syntax", "lark")
        note += f" The input must match this {syntax} grammar:\n{fmt.get('definition', '')}"
    return f"{description}\n\n{note}".strip()


def _one_tool(tool: Any, where: str, tools: list[Tool], tool_map: ToolMap, namespace: str | None) -> None:
    if not isinstance(tool, dict):
        raise InvalidRequestError(f"'{where}' must be an object.", param=where)
    kind = tool.get("type", "function")
    if not isinstance(kind, str):
        raise InvalidRequestError(f"'{where}.type' must be a string.", param=f"{where}.type")
    name = tool.get("name")
    if kind == "namespace":
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"'{where}.name' is required for a namespace tool.", param=f"{where}.name")
        children = tool.get("tools")
        if not isinstance(children, list):
            raise InvalidRequestError(f"'{where}.tools' must be an array.", param=f"{where}.tools")
        for i, child in enumerate(children):
            _one_tool(child, f"{where}.tools[{i}]", tools, tool_map, name)
        return
    if kind in HOSTED_TOOLS:
        log.debug("dropping hosted tool %s: only OpenAI can run it", kind)
        return
    if kind not in ("function", "custom"):
        raise InvalidRequestError(f"Tool type '{kind}' is not supported.", param=f"{where}.type")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"'{where}.name' is required.", param=f"{where}.name")
    flat = tool_map.add(ClientTool(name=name, namespace=namespace, kind=kind))
    if kind == "custom":
        schema: dict[str, Any] = {"type": "object", "properties": {"input": {"type": "string"}},
                                  "required": ["input"], "additionalProperties": False}
        tools.append(Tool(name=flat, description=_custom_description(tool), input_schema=schema))
        return
    params = tool.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise InvalidRequestError(f"'{where}.parameters' must be a JSON schema object.", param=f"{where}.parameters")
    extra = {"strict": tool["strict"]} if isinstance(tool.get("strict"), bool) else {}
    description = tool.get("description")
    tools.append(Tool(name=flat, description=description if isinstance(description, str) else None,
                      input_schema=params, extra=extra))


def parse_tools(raw: Any, where: str, tools: list[Tool], tool_map: ToolMap) -> None:
    """Append the canonical tools for the Responses tool list ``raw`` (found at ``where``)."""
    if raw is None:
        return
    if not isinstance(raw, list):
        raise InvalidRequestError(f"'{where}' must be an array.", param=where)
    seen = {t.name for t in tools}
    for i, tool in enumerate(raw):
        before = len(tools)
        _one_tool(tool, f"{where}[{i}]", tools, tool_map, None)
        # A tool repeated (e.g. in a later additional_tools item) is declared once upstream.
        for added in tools[before:]:
            if added.name in seen:
                tools.remove(added)
            seen.add(added.name)


def parse_tool_choice(raw: Any, tool_map: ToolMap, parallel: Any) -> ToolChoice | None:
    """Canonical tool choice for Responses' ``tool_choice`` and ``parallel_tool_calls``."""
    choice: ToolChoice | None
    if raw is None:
        choice = None
    elif raw in ("auto", "none"):
        choice = ToolChoice(type=raw)
    elif raw == "required":
        choice = ToolChoice(type="any")
    elif isinstance(raw, dict) and raw.get("type") in ("function", "custom") and isinstance(raw.get("name"), str):
        namespace = raw.get("namespace") if isinstance(raw.get("namespace"), str) else None
        choice = ToolChoice(type="tool", name=flat_name(namespace, raw["name"]))
    elif isinstance(raw, dict) and raw.get("type") == "allowed_tools":
        mode = raw.get("mode", "auto")
        choice = ToolChoice(type="any" if mode == "required" else "auto")
    elif isinstance(raw, dict) and isinstance(raw.get("type"), str) and raw["type"] in HOSTED_TOOLS:
        choice = ToolChoice(type="auto")
    else:
        raise InvalidRequestError("'tool_choice' must be 'auto', 'none', 'required' or a tool object.",
                                  param="tool_choice")
    if parallel is False:
        choice = choice or ToolChoice(type="auto")
        choice = choice.model_copy(update={"disable_parallel_tool_use": True})
    elif parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequestError("'parallel_tool_calls' must be a boolean.", param="parallel_tool_calls")
    return choice


def call_item_fields(flat: str, arguments: dict[str, Any], tool_map: ToolMap) -> dict[str, Any]:
    """The client-facing fields of a tool call: ``type``, ``name``, ``namespace``, ``arguments``/``input``."""
    tool = tool_map.client_tool(flat)
    fields: dict[str, Any] = {"name": tool.name}
    if tool.namespace:
        fields["namespace"] = tool.namespace
    if tool.kind == "custom":
        value = arguments.get("input", "")
        fields["type"] = "custom_tool_call"
        fields["input"] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    else:
        fields["type"] = "function_call"
        fields["arguments"] = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    return fields
