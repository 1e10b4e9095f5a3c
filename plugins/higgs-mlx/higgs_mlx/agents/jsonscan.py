"""A tiny incremental scanner that finds where a JSON value ends in a growing buffer.

Tool-call parsers buffer a call until its JSON is complete; this tells them "complete at index N",
"not complete yet" or "this cannot be JSON" without re-parsing the buffer with ``json`` on every token.
"""

from __future__ import annotations

INCOMPLETE = -1
INVALID = -2

_OPENERS = {"{": "}", "[": "]"}


def json_end(text: str, start: int = 0) -> int:
    """Index just past the JSON object/array (or string) starting at ``text[start]`` (after whitespace).

    Returns:
        the end index, ``INCOMPLETE`` when more text is needed, or ``INVALID`` when ``text[start:]`` does
        not begin with an object, array or string, or the brackets do not match.
    """
    i = start
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    if i == len(text):
        return INCOMPLETE
    if text[i] not in "{[\"":
        return INVALID
    stack: list[str] = []
    in_string = False
    escaped = False
    for j in range(i, len(text)):
        ch = text[j]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                if not stack:
                    return j + 1
            continue
        if ch == '"':
            in_string = True
        elif ch in _OPENERS:
            stack.append(_OPENERS[ch])
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return INVALID
            if not stack:
                return j + 1
    return INCOMPLETE
