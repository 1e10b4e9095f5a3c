"""Malformed requests are 400s, never crashes: random JSON in every field the parsers read."""

from __future__ import annotations

import json

from higgs_format_ollama.format import OllamaFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from higgs.errors import ApiError

CHAT = {"model": "m", "stream": False, "format": {"type": "object"}, "think": True, "keep_alive": "5m",
        "options": {"temperature": 0.1, "top_p": 0.9, "top_k": 5, "num_predict": 9, "stop": ["x"], "seed": 1},
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}],
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u", "images": ["iVBORw0KGgo"]},
                     {"role": "assistant", "content": "", "thinking": "t",
                      "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
                     {"role": "tool", "content": "r", "tool_name": "f"}]}
GENERATE = {"model": "m", "prompt": "p", "system": "s", "images": ["iVBORw0KGgo"], "format": "json", "raw": False,
            "options": {"num_predict": 3}, "suffix": "x", "context": [1, 2]}
EMBED = {"model": "m", "input": ["a", "b"], "dimensions": 3}
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=8)


def paths(value, prefix=()):
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from paths(child, (*prefix, i))


def replaced(body, path, value):
    body = json.loads(json.dumps(body))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


FMT = OllamaFormat()
CASES = [(CHAT, lambda b: FMT.parse_chat(b, {})), (GENERATE, lambda b: FMT.generate.parse_chat(b, {})),
         (GENERATE, FMT.generate.parse_completion), (EMBED, FMT.parse_embedding)]
TARGETS = [(i, p) for i, (body, _) in enumerate(CASES) for p in paths(body)]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(TARGETS), json_values)
def test_any_field_with_any_value_is_a_clean_error(target, value):
    index, path = target
    body, parse = CASES[index]
    try:
        parse(replaced(body, path, value))
    except (ApiError, ValidationError):
        pass  # the gateway renders both as 400s in Ollama's error shape
