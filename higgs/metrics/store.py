"""The in-memory rolling metrics store: request samples kept for ``[retention] minutes``, plus lifetime counters.

Samples are appended in arrival order and pruned from the left, so adding is O(1) amortised and a read
scans only what the window holds. Lifetime counters (for Prometheus ``_total`` series and latency
histograms) are never pruned: a scraper computes its own rates from them.
"""

from __future__ import annotations

import bisect
import math
import operator
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from higgs.records import RequestRecord

#: Windows reported by ``/metrics``, in seconds; those longer than the retention are dropped.
WINDOWS: dict[str, float] = {"1m": 60.0, "5m": 300.0, "15m": 900.0, "1h": 3600.0}
#: Upper bounds (seconds) of the lifetime latency / TTFT histograms.
HISTOGRAM_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RECENT_ERRORS = 50
#: Samples kept at most, whatever the retention: bounds memory (~40 MB) and the cost of a report (~1 s).
MAX_SAMPLES = 200_000
GROUPS = ("model", "provider", "route")


@dataclass(frozen=True)
class Sample:
    """The compact part of a ``RequestRecord`` that windows aggregate."""

    time: float
    request_id: str
    endpoint: str
    format_in: str
    format_out: str | None
    model: str
    provider: str
    route: str
    local: bool
    stream: bool
    status: int
    latency_ms: float
    ttft_ms: float | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    tokens_per_s: float | None
    error_type: str | None

    @property
    def is_error(self) -> bool:
        """A request counts as failed when it carries an error type or a status >= 400."""
        return self.error_type is not None or self.status >= 400

    @classmethod
    def from_record(cls, record: RequestRecord) -> Sample:
        """Copy what metrics need out of a record (``-`` stands for an unknown provider/route)."""
        return cls(
            time=record.time,
            request_id=record.request_id,
            endpoint=record.endpoint,
            format_in=record.format_in,
            format_out=record.format_out,
            model=record.model or "-",
            provider=record.provider or "-",
            route=record.route or "-",
            local=record.local,
            stream=record.stream,
            status=record.status,
            latency_ms=max(0.0, record.latency_ms),
            ttft_ms=record.ttft_ms,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            cached_tokens=record.cached_tokens,
            tokens_per_s=record.tokens_per_s,
            error_type=record.error_type,
        )


def percentile(values: Sequence[float], q: float, *, presorted: bool = False) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation, or None when empty."""
    if not values:
        return None
    ordered = values if presorted else sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    if lo == hi:
        return ordered[lo]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _distribution(values: list[float]) -> dict[str, float | None]:
    values.sort()
    return {
        "p50": _round(percentile(values, 0.50, presorted=True)),
        "p95": _round(percentile(values, 0.95, presorted=True)),
        "p99": _round(percentile(values, 0.99, presorted=True)),
        "mean": _round(sum(values) / len(values)) if values else None,
        "max": _round(values[-1]) if values else None,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def summarize(samples: Sequence[Sample], seconds: float) -> dict[str, Any]:
    """Aggregate ``samples`` that fall in a window of ``seconds``: rates, percentiles, tokens, errors.

    One pass over the samples (this runs for every group and window of a ``/metrics`` read).
    """
    latencies: list[float] = []
    ttfts: list[float] = []
    decode: list[float] = []
    error_types: Counter[str] = Counter()
    inputs = outputs = cached = local = 0
    for s in samples:
        latencies.append(s.latency_ms)
        if s.ttft_ms is not None:
            ttfts.append(s.ttft_ms)
        if s.tokens_per_s is not None:
            decode.append(s.tokens_per_s)
        if s.error_type is not None or s.status >= 400:
            error_types[s.error_type or f"http_{s.status}"] += 1
        inputs += s.input_tokens
        outputs += s.output_tokens
        cached += s.cached_tokens
        local += s.local
    n = len(latencies)
    errors = sum(error_types.values())
    return {
        "requests": n,
        "request_rate": round(n / seconds, 4) if seconds > 0 else 0.0,
        "errors": errors,
        "error_rate": round(errors / n, 4) if n else 0.0,
        "error_types": dict(error_types),
        "latency_ms": _distribution(latencies),
        "ttft_ms": _distribution(ttfts),
        "input_tokens": inputs,
        "output_tokens": outputs,
        "cached_tokens": cached,
        "output_tokens_per_s": round(outputs / seconds, 3) if seconds > 0 else 0.0,
        "decode_tokens_per_s": _round(sum(decode) / len(decode)) if decode else None,
        "local": local,
        "remote": n - local,
    }


@dataclass
class Histogram:
    """A cumulative histogram in seconds (Prometheus ``le`` buckets)."""

    bounds: tuple[float, ...] = HISTOGRAM_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(HISTOGRAM_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        for i, bound in enumerate(self.bounds):
            if seconds <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        return out


@dataclass
class Lifetime:
    """Counters since the server started, never pruned."""

    requests: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    tokens: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    latency: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    ttft: dict[tuple[str, str], Histogram] = field(default_factory=dict)

    def add(self, s: Sample) -> None:
        """Account for one sample.

        A request no provider took (unknown model, bad body, auth or rate-limit failure) is counted under
        model ``-``: these counters are never pruned, and the name is whatever the client sent, so one
        label per name would let any client grow memory and the Prometheus output without bound.
        """
        model = s.model if s.provider != "-" else "-"
        self.requests[(model, s.provider, s.route, str(s.status))] += 1
        for kind, n in (("input", s.input_tokens), ("output", s.output_tokens), ("cached", s.cached_tokens)):
            if n:
                self.tokens[(model, s.provider, kind)] += n
        self.latency.setdefault((model, s.provider), Histogram()).observe(s.latency_ms / 1000)
        if s.ttft_ms is not None:
            self.ttft.setdefault((model, s.provider), Histogram()).observe(s.ttft_ms / 1000)


class MetricsStore:
    """Request samples over a rolling window plus lifetime counters. Thread-safe.

    Args:
        retention_minutes: how long samples are kept (``[retention] minutes``).
        enabled: False keeps only lifetime counters (``[retention] enabled = false``).
        clock: wall clock in seconds (tests inject their own).
    """

    def __init__(
        self, retention_minutes: float = 60, *, enabled: bool = True, clock: Callable[[], float] = time.time
    ) -> None:
        self.retention_s = retention_minutes * 60.0
        self.enabled = enabled
        self.clock = clock
        self.started = clock()
        self.samples: deque[Sample] = deque(maxlen=MAX_SAMPLES)
        self.recent_errors: deque[Sample] = deque(maxlen=RECENT_ERRORS)
        self.lifetime = Lifetime()
        self._lock = threading.Lock()

    def add(self, record: RequestRecord) -> None:
        """Record a finished request."""
        sample = Sample.from_record(record)
        with self._lock:
            self.lifetime.add(sample)
            if sample.is_error:
                self.recent_errors.append(sample)
            if self.enabled:
                self.samples.append(sample)
            self._prune(self.clock())

    def _prune(self, now: float) -> None:
        cutoff = now - self.retention_s
        while self.samples and self.samples[0].time < cutoff:
            self.samples.popleft()

    def snapshot(self) -> list[Sample]:
        """The samples still inside the retention window, oldest first."""
        with self._lock:
            self._prune(self.clock())
            return list(self.samples)

    def windows(self) -> dict[str, float]:
        """Reported windows: the standard ones shorter than the retention, plus ``retention`` itself."""
        out = {name: secs for name, secs in WINDOWS.items() if secs < self.retention_s}
        out["retention"] = self.retention_s
        return out

    def report(self, *, bucket_s: float | None = None) -> dict[str, Any]:
        """The ``/metrics`` JSON body (without engine state, which the plugin adds)."""
        now = self.clock()
        samples = self.snapshot()
        uptime = max(now - self.started, 1e-9)
        windows = self.windows()

        # Samples are appended when requests finish but carry their start time: sort (nearly sorted, cheap)
        # so that every window is a suffix found by bisection, and each group is split out in one pass.
        samples.sort(key=operator.attrgetter("time"))

        def suffixes(part: list[Sample]) -> dict[str, list[Sample]]:
            times = [s.time for s in part]
            return {name: part[bisect.bisect_left(times, now - secs):] for name, secs in windows.items()}

        # A window younger than the server is measured over the uptime, so rates are not diluted.
        spans = {name: min(secs, uptime) for name, secs in windows.items()}
        body: dict[str, Any] = {
            "version": 1,
            "time": now,
            "started": self.started,
            "uptime_s": round(uptime, 3),
            "retention_minutes": self.retention_s / 60,
            "retention_enabled": self.enabled,
            "totals": self._totals(),
            "windows": {name: summarize(part, spans[name]) for name, part in suffixes(samples).items()},
        }
        keys: dict[str, Callable[[Sample], str]] = {g: operator.attrgetter(g) for g in GROUPS}
        keys["format"] = lambda s: f"{s.format_in}->{s.format_out or '-'}"
        for group, key in keys.items():
            split: dict[str, list[Sample]] = {}
            for sample in samples:
                split.setdefault(key(sample), []).append(sample)
            body[f"by_{group}"] = {
                name: {w: summarize(part, spans[w]) for w, part in suffixes(split[name]).items()}
                for name in sorted(split)
            }
        body["series"] = series(samples, now, min(self.retention_s, max(uptime, 60.0)), bucket_s)
        with self._lock:
            errors = list(self.recent_errors)
        cutoff = now - self.retention_s
        body["recent_errors"] = [_error_view(s) for s in reversed(errors) if s.time >= cutoff]
        return body

    def _totals(self) -> dict[str, int]:
        with self._lock:
            requests = sum(self.lifetime.requests.values())
            errors = sum(n for (_, _, _, status), n in self.lifetime.requests.items() if int(status) >= 400)
            tokens: Counter[str] = Counter()
            for (_, _, kind), n in self.lifetime.tokens.items():
                tokens[kind] += n
        return {
            "requests": requests,
            "errors_http": errors,
            "input_tokens": tokens["input"],
            "output_tokens": tokens["output"],
            "cached_tokens": tokens["cached"],
        }


def series(samples: Iterable[Sample], now: float, span_s: float, bucket_s: float | None = None) -> dict[str, Any]:
    """Per-bucket time series over the last ``span_s`` seconds, oldest bucket first (for sparklines).

    Buckets default to 60 per span, at least one second each.
    """
    size = bucket_s or max(1.0, math.ceil(span_s / 60))
    count = max(1, math.ceil(span_s / size))
    start = now - count * size
    requests, errors, output = [0] * count, [0] * count, [0] * count
    latencies: list[list[float]] = [[] for _ in range(count)]
    for s in samples:
        if s.time < start:
            continue
        i = min(count - 1, int((s.time - start) // size))
        requests[i] += 1
        errors[i] += s.is_error
        output[i] += s.output_tokens
        latencies[i].append(s.latency_ms)
    return {
        "bucket_s": size,
        "start": start,
        "requests": requests,
        "errors": errors,
        "output_tokens_per_s": [round(n / size, 3) for n in output],
        "latency_p50_ms": [_round(percentile(v, 0.5)) or 0.0 for v in latencies],
    }


def _error_view(s: Sample) -> dict[str, Any]:
    return {
        "time": s.time,
        "request_id": s.request_id,
        "endpoint": s.endpoint,
        "model": s.model,
        "provider": s.provider,
        "route": s.route,
        "status": s.status,
        "error_type": s.error_type or f"http_{s.status}",
        "latency_ms": round(s.latency_ms, 3),
    }
