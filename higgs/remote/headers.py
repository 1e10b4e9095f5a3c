"""Header handling for the proxy path: what is forwarded, how credentials travel, retry-after parsing."""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from functools import partial

from multidict import CIMultiDict, CIMultiDictProxy

#: Never forwarded in either direction (RFC 9110 section 7.6.1 plus framing headers aiohttp sets itself).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length", "expect",
})
#: Dropped from client requests: compression is negotiated per hop (the gateway hands over the decoded,
#: possibly re-serialized body); credentials are re-issued explicitly.
REQUEST_DROP = HOP_BY_HOP | {"accept-encoding", "content-encoding", "authorization", "x-api-key", "cookie"}
#: Response headers the gateway sets itself; ``content-encoding`` goes because a body compressed despite
#: the absent ``Accept-Encoding`` is relayed decoded.
RESPONSE_DROP = HOP_BY_HOP | {"date", "server", "content-encoding"}
#: Characters of a key echoed back masked or truncated; a dot only inside the run, not a sentence's end.
_KEYISH = r"(?:[A-Za-z0-9_\-*]|\.(?=[A-Za-z0-9_\-*.])|\u2026)*"
_MASK = frozenset("*.\u2026")


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for key, value in headers:
        if key.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def filter_headers(headers: Iterable[tuple[str, str]], drop: frozenset[str] | set[str]) -> list[tuple[str, str]]:
    """Headers minus ``drop`` and those listed in ``Connection``; repeated headers are kept in order."""
    lowered = [(k.lower(), k, v) for k, v in headers]
    dropped = drop
    if any(low == "connection" for low, _, _ in lowered):
        dropped = drop | _connection_tokens((k, v) for _, k, v in lowered)
    return [(k, v) for low, k, v in lowered if low not in dropped and not low.startswith("x-higgs-")]


def client_credentials(headers: Mapping[str, str]) -> list[str]:
    """The API keys a client sent, ``Authorization: Bearer K`` first, then ``x-api-key: K``."""
    ci = headers if isinstance(headers, CIMultiDict | CIMultiDictProxy) else CIMultiDict(headers)
    found = []
    auth = ci.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        found.append(auth[7:].strip())
    if key := ci.get("x-api-key", "").strip():
        found.append(key)
    return found


def client_credential(headers: Mapping[str, str], skip: str | None = None) -> str | None:
    """The first API key a client sent that is not ``skip`` (the gateway's own key)."""
    for key in client_credentials(headers):
        if not (skip and same_secret(skip, key)):
            return key
    return None


def same_secret(a: str, b: str | None) -> bool:
    """Constant-time comparison of two credentials."""
    return b is not None and hmac.compare_digest(a.encode(), b.encode())


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date), or None."""
    ci = CIMultiDict(headers)
    try:
        if ms := ci.get("retry-after-ms"):
            return max(0.0, float(ms) / 1000)
        if value := ci.get("retry-after"):
            try:
                return max(0.0, float(value))
            except ValueError:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
    return None


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every known secret replaced by ``***`` (upstreams sometimes echo keys).

    Besides exact copies this catches the masked or truncated echoes upstreams produce (OpenAI's
    ``Incorrect API key provided: sk-abc12***...wxyz``): a run of key characters that starts with the first
    6 characters of a secret and is either masked (``*``, ``.``, ``…``) or a prefix of the secret.
    """
    for secret in secrets:
        if not secret or len(secret) < 4:
            continue
        text = text.replace(secret, "***")
        if len(secret) >= 6:
            text = re.sub(re.escape(secret[:6]) + _KEYISH, partial(_mask_echo, secret=secret), text)
    return text


def _mask_echo(match: re.Match[str], secret: str) -> str:
    """``***`` when the matched run is a masked or truncated echo of ``secret``, else the run unchanged."""
    run = match.group(0)
    return "***" if _MASK.intersection(run) or secret.startswith(run) else run
