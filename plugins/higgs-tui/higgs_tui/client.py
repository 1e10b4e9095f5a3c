"""Reading a running server: ``/metrics`` and ``/v1/system`` over HTTP, with a short timeout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp


class Unreachable(Exception):
    """The server did not answer (or answered with an error); the message says why."""


@dataclass
class Snapshot:
    """One poll of the server."""

    metrics: dict[str, Any]
    system: dict[str, Any] = field(default_factory=dict)


class MetricsClient:
    """Polls one server. Reuses a session; a failed poll raises ``Unreachable`` and the next one retries.

    Args:
        url: base URL (no ``/v1``).
        api_key: sent as Bearer and ``x-api-key`` when the server requires one.
        timeout: seconds per request.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 3.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.headers = {"authorization": f"Bearer {api_key}", "x-api-key": api_key} if api_key else {}
        self._session: aiohttp.ClientSession | None = None

    async def _get(self, path: str) -> dict[str, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout, headers=self.headers)
        try:
            async with self._session.get(self.url + path) as resp:
                if resp.status == 401:
                    raise Unreachable(f"{path}: the server wants an API key (HTTP 401); pass --api-key")
                if resp.status == 404 and path == "/metrics":
                    raise Unreachable("/metrics not found: the server runs without the metrics plugin")
                if resp.status != 200:
                    raise Unreachable(f"{path}: HTTP {resp.status}")
                data = await resp.json()
        except aiohttp.ClientConnectionError as err:
            await self.close()  # a restarted server needs fresh connections
            raise Unreachable(f"cannot connect to {self.url}: {err}") from err
        except TimeoutError as err:
            raise Unreachable(f"{self.url} did not answer within {self.timeout.total:.0f} s") from err
        except (aiohttp.ClientError, ValueError) as err:
            raise Unreachable(f"{path}: {err}") from err
        if not isinstance(data, dict):
            raise Unreachable(f"{path}: unexpected answer")
        return data

    async def poll(self) -> Snapshot:
        """Fetch ``/metrics`` (required) and ``/v1/system`` (best effort)."""
        metrics = await self._get("/metrics")
        try:
            system = await self._get("/v1/system")
        except Unreachable:
            system = {}
        return Snapshot(metrics=metrics, system=system)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
