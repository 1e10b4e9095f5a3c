"""GPT-2's byte <-> printable-unicode table, used by byte-level BPE vocabularies."""

from __future__ import annotations

from functools import cache


@cache
def byte_decoder() -> dict[str, int]:
    """Map each printable stand-in character of a byte-level BPE token back to its byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}
