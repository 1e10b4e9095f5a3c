"""Stop strings matched across token boundaries.

Generated text goes through ``StopMatcher.feed``; it returns only text that can no longer be the start of
a stop string, and holds back the rest until the next piece decides it. A stop string is never emitted.
"""

from __future__ import annotations


class StopMatcher:
    """Finds the first stop string in a stream of text pieces."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Add ``text``; return ``(text safe to emit, the stop string matched or None)``.

        After a match, everything from the stop string on is dropped.
        """
        if not self.stops:
            return text, None
        buf = self._held + text
        hit: tuple[int, str] | None = None
        for stop in self.stops:
            at = buf.find(stop)
            if at >= 0 and (hit is None or at < hit[0]):
                hit = (at, stop)
        if hit is not None:
            self._held = ""
            return buf[: hit[0]], hit[1]
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(buf)), hold, -1):
                if buf.endswith(stop[:k]):
                    hold = k
                    break
        self._held = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], None

    def flush(self) -> str:
        """The held-back text, at the end of generation (it did not turn into a stop string)."""
        text, self._held = self._held, ""
        return text
