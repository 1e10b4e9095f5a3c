"""Prometheus text exposition (format 0.0.4) of the metrics store and the providers' engine state.

Written by hand rather than through ``prometheus_client``: the format is small and stable, and the kernel
keeps its dependency list short. Lifetime series are counters and histograms (a scraper derives rates);
rolling-window quantiles are gauges labelled with their window.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from higgs.metrics.store import MetricsStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Writer:
    """Collects samples per metric family so each family's lines come out contiguous, as the format requires."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def declare(self, name: str, kind: str, help_text: str) -> None:
        self._families.setdefault(name, (kind, help_text, []))

    def sample(self, name: str, value: float, *, family: str | None = None, **labels: str) -> None:
        self._families[family or name][2].append(f"{name}{_labels(**labels)} {_num(value)}")

    def text(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text, samples) in self._families.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(lines) + "\n"


def render(store: MetricsStore, engine: Mapping[str, Mapping[str, Any]],
           report: Mapping[str, Any] | None = None) -> str:
    """The whole exposition: lifetime counters, histograms, window gauges and engine gauges.

    ``report`` is ``store.report()`` when the caller already has one.
    """
    w = _Writer()
    report = report if report is not None else store.report()
    w.declare("higgs_uptime_seconds", "gauge", "Seconds since the metrics store started.")
    w.sample("higgs_uptime_seconds", report["uptime_s"])

    with store._lock:  # a consistent copy of the lifetime counters
        requests = dict(store.lifetime.requests)
        tokens = dict(store.lifetime.tokens)
        latency = {k: (list(h.cumulative()), h.total, h.count) for k, h in store.lifetime.latency.items()}
        ttft = {k: (list(h.cumulative()), h.total, h.count) for k, h in store.lifetime.ttft.items()}

    w.declare("higgs_requests_total", "counter", "Finished client requests.")
    for (model, provider, route, status), n in sorted(requests.items()):
        w.sample("higgs_requests_total", n, model=model, provider=provider, route=route, status=status)
    w.declare("higgs_tokens_total", "counter", "Tokens processed, by kind (input, output, cached).")
    for (model, provider, kind), n in sorted(tokens.items()):
        w.sample("higgs_tokens_total", n, model=model, provider=provider, kind=kind)
    for name, data, help_text in (
        ("higgs_request_duration_seconds", latency, "End-to-end request latency."),
        ("higgs_time_to_first_token_seconds", ttft, "Time to the first streamed token."),
    ):
        w.declare(name, "histogram", help_text)
        for (model, provider), (buckets, total, count) in sorted(data.items()):
            for le, cumulative in buckets:
                w.sample(f"{name}_bucket", cumulative, family=name, model=model, provider=provider, le=le)
            w.sample(f"{name}_sum", total, family=name, model=model, provider=provider)
            w.sample(f"{name}_count", count, family=name, model=model, provider=provider)

    _window_gauges(w, report)
    _engine_gauges(w, engine)
    return w.text()


def _window_gauges(w: _Writer, report: Mapping[str, Any]) -> None:
    for window, stats in report["windows"].items():
        w.declare("higgs_window_request_rate", "gauge", "Requests per second over a rolling window.")
        w.sample("higgs_window_request_rate", stats["request_rate"], window=window)
        w.declare("higgs_window_error_ratio", "gauge", "Share of failed requests over a rolling window.")
        w.sample("higgs_window_error_ratio", stats["error_rate"], window=window)
        w.declare("higgs_window_output_tokens_per_second", "gauge", "Output token throughput over a window.")
        w.sample("higgs_window_output_tokens_per_second", stats["output_tokens_per_s"], window=window)
        for metric, key in (("higgs_window_latency_seconds", "latency_ms"), ("higgs_window_ttft_seconds", "ttft_ms")):
            w.declare(metric, "gauge", f"Quantiles of {key[:-3]} over a rolling window.")
            for q in ("p50", "p95", "p99"):
                value = stats[key][q]
                if value is not None:
                    w.sample(metric, value / 1000, window=window, quantile=f"0.{q[1:]}")
    for group in ("model", "provider", "route"):
        name = f"higgs_window_requests_by_{group}"
        w.declare(name, "gauge", f"Requests per {group} over a rolling window.")
        for key, per_window in report[f"by_{group}"].items():
            for window, stats in per_window.items():
                w.sample(name, stats["requests"], **{group: key, "window": window})


def _engine_gauges(w: _Writer, engine: Mapping[str, Mapping[str, Any]]) -> None:
    for provider, state in sorted(engine.items()):
        for key, value in _flatten(state):
            name = "higgs_engine_" + _NAME_RE.sub("_", key).strip("_").lower()
            w.declare(name, "gauge", f"Engine state '{key}' reported by the provider.")
            w.sample(name, value, provider=provider)


def _flatten(state: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, float]]:
    """Numeric leaves of a (nested) state dict as ``(dotted.key, value)``; strings and lists are skipped."""
    for key, value in state.items():
        full = f"{prefix}{key}"
        if isinstance(value, bool) or isinstance(value, int | float):
            yield full, float(value) if not isinstance(value, int) else value
        elif isinstance(value, Mapping):
            yield from _flatten(value, f"{full}_")
