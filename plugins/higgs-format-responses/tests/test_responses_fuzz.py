"""Malformed requests are 400s, never crashes: random JSON in every field the parser reads."""

from __future__ import annotations

import json
from pathlib import Path

from higgs_format_responses.format import ResponsesFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from higgs.errors import ApiError

CODEX = json.loads((Path(__file__).parent / "fixtures" / "codex_request.json").read_text())
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=8)


def paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from paths(child, (*prefix, i))


ALL_PATHS = [p for p in paths(CODEX) if p]


def replaced(body, path, value):
    body = json.loads(json.dumps(body))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_PATHS), json_values)
def test_any_field_with_any_value_is_a_clean_error(path, value):
    body = replaced(CODEX, path, value)
    try:
        ResponsesFormat().parse_chat(body, {})
    except (ApiError, ValidationError):
        pass  # the gateway renders both as 400s in the Responses error shape
