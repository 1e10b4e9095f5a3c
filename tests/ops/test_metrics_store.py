"""The rolling metrics store, its Prometheus rendering and the rotating JSONL log, without a server."""

from __future__ import annotations

import json
import re

import pytest

from higgs.metrics import prometheus
from higgs.metrics.jsonl import RotatingJsonlWriter
from higgs.metrics.store import MetricsStore, percentile
from higgs.records import RequestRecord


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(t: float, **kw) -> RequestRecord:
    base = dict(time=t, request_id=f"req-{t}", endpoint="/v1/chat/completions", format_in="openai",
                format_out="openai", model="m1", provider="p1", route="default", status=200, latency_ms=100.0,
                ttft_ms=20.0, input_tokens=10, output_tokens=50, tokens_per_s=500.0)
    base.update(kw)
    return RequestRecord(**base)


def test_percentile_interpolates():
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile(list(map(float, range(1, 101))), 0.95) == pytest.approx(95.05)


def test_windows_groups_and_rates():
    clock = Clock()
    store = MetricsStore(60, clock=clock)
    clock.now += 600  # server up for 10 minutes
    for i in range(10):
        store.add(record(clock.now - 30 + i, latency_ms=100.0 + i * 10))
    store.add(record(clock.now - 200, model="m2", provider="p2", route="pattern:big", output_tokens=5))
    store.add(record(clock.now - 5, model="m2", provider="p2", status=502, error_type="upstream_error",
                     output_tokens=0, ttft_ms=None, tokens_per_s=None))
    report = store.report()
    assert set(report["windows"]) == {"1m", "5m", "15m", "retention"}
    one = report["windows"]["1m"]
    assert one["requests"] == 11
    assert one["request_rate"] == pytest.approx(11 / 60, abs=1e-3)
    assert one["errors"] == 1 and one["error_types"] == {"upstream_error": 1}
    assert one["latency_ms"]["p50"] == 140.0  # 100 (the error), 100..190
    assert one["output_tokens"] == 500
    assert one["output_tokens_per_s"] == pytest.approx(500 / 60, abs=1e-2)
    assert report["windows"]["5m"]["requests"] == 12
    assert report["by_model"]["m2"]["5m"]["requests"] == 2
    assert report["by_model"]["m2"]["1m"]["errors"] == 1
    assert report["by_provider"]["p1"]["1m"]["requests"] == 10
    assert report["by_route"]["pattern:big"]["5m"]["requests"] == 1
    assert report["by_format"]["openai->openai"]["5m"]["requests"] == 12
    assert report["totals"]["requests"] == 12 and report["totals"]["output_tokens"] == 505
    assert report["recent_errors"][0]["request_id"] == f"req-{clock.now - 5}"
    assert report["recent_errors"][0]["status"] == 502
    series = report["series"]
    assert sum(series["requests"]) == 12 and sum(series["errors"]) == 1
    assert len(series["requests"]) == len(series["output_tokens_per_s"]) == len(series["latency_p50_ms"])


def test_young_server_rates_use_uptime():
    clock = Clock()
    store = MetricsStore(60, clock=clock)
    clock.now += 10
    for _ in range(5):
        store.add(record(clock.now))
    assert store.report()["windows"]["1m"]["request_rate"] == pytest.approx(0.5)


def test_retention_prunes_samples_but_not_lifetime_counters():
    clock = Clock()
    store = MetricsStore(2, clock=clock)  # two minutes
    store.add(record(clock.now, status=500, error_type="boom"))
    store.add(record(clock.now + 30))
    clock.now += 150  # the first sample is now older than the retention
    store.add(record(clock.now))
    assert len(store.snapshot()) == 2
    report = store.report()
    assert set(report["windows"]) == {"1m", "retention"}
    assert report["windows"]["retention"]["requests"] == 2
    assert report["totals"]["requests"] == 3  # lifetime
    assert report["recent_errors"] == []  # the error fell out of the retention window
    clock.now += 1000
    assert store.snapshot() == [] and store.report()["windows"]["retention"]["requests"] == 0


def test_retention_disabled_keeps_counters_only():
    store = MetricsStore(60, enabled=False)
    store.add(record(store.clock()))
    assert store.snapshot() == []
    assert store.report()["totals"]["requests"] == 1


def test_unrouted_model_names_do_not_grow_lifetime_labels():
    """Regression: every unknown model name a client sent became a never-pruned Prometheus series."""
    clock = Clock()
    store = MetricsStore(60, clock=clock)
    for i in range(50):
        store.add(record(clock.now, model=f"random-{i}", provider=None, route=None, status=404,
                         error_type="not_found"))
    store.add(record(clock.now))
    text = prometheus.render(store, {})
    lifetime = [line for line in text.splitlines() if "random-" in line and "higgs_window_" not in line]
    assert lifetime == []  # the windows keep names for their retention, then prune them
    assert 'higgs_requests_total{model="-",provider="-",route="-",status="404"} 50' in text
    assert 'higgs_requests_total{model="m1",provider="p1",route="default",status="200"} 1' in text


def test_prometheus_text_is_well_formed():
    clock = Clock()
    store = MetricsStore(60, clock=clock)
    clock.now += 100
    store.add(record(clock.now, model='we"ird\nname'))
    store.add(record(clock.now, status=429, error_type="rate_limited"))
    text = prometheus.render(store, {"higgs": {"local": True, "batch_size": 3, "cache": {"bytes": 1024},
                                               "note": "ignored"}})
    families = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    names = [n for n, _ in families]
    assert len(names) == len(set(names))
    # every sample belongs to the family declared just above it (contiguous families)
    current = None
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            current = line.split()[2]
        elif not line.startswith("#"):
            assert line.startswith(current), line
            assert re.match(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? -?[0-9.e+Inf-]+$', line), line
    assert 'higgs_requests_total{model="m1",provider="p1",route="default",status="429"} 1' in text
    assert 'model="we\\"ird\\nname"' in text
    assert 'higgs_request_duration_seconds_bucket{model="m1",provider="p1",le="0.1"} 1' in text
    assert 'higgs_request_duration_seconds_bucket{model="m1",provider="p1",le="+Inf"} 1' in text
    assert 'higgs_tokens_total{model="m1",provider="p1",kind="output"} 50' in text
    assert 'higgs_engine_batch_size{provider="higgs"} 3' in text
    assert 'higgs_engine_cache_bytes{provider="higgs"} 1024' in text
    assert 'higgs_window_latency_seconds{window="1m",quantile="0.95"} 0.1' in text


def test_jsonl_rotation_keeps_max_files(tmp_path):
    path = tmp_path / "log" / "metrics.jsonl"
    writer = RotatingJsonlWriter(path, max_bytes=1000, max_files=3)
    for i in range(100):
        writer.write({"i": i, "pad": "x" * 40})
    writer.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["metrics.jsonl", "metrics.jsonl.1", "metrics.jsonl.2"]
    for p in path.parent.iterdir():
        assert p.stat().st_size <= 1000
    lines = [json.loads(x) for p in (path.with_name("metrics.jsonl.2"), path.with_name("metrics.jsonl.1"), path)
             for x in p.read_text().splitlines()]
    numbers = [x["i"] for x in lines]
    assert numbers == list(range(numbers[0], 100))  # newest records kept, in order, none lost in between


def test_jsonl_single_file_stays_bounded(tmp_path):
    path = tmp_path / "m.jsonl"
    writer = RotatingJsonlWriter(path, max_bytes=500, max_files=1)
    for i in range(50):
        writer.write({"i": i})
    writer.close()
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]
    assert path.stat().st_size <= 500
    assert json.loads(path.read_text().splitlines()[-1]) == {"i": 49}


def test_jsonl_unwritable_path_drops_records_without_growing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    writer = RotatingJsonlWriter(blocker / "sub" / "m.jsonl", max_bytes=100, max_files=2)
    writer.write({"i": 1})
    writer.write({"i": 2})
    writer.close()
    assert writer.failed and writer._queue.qsize() == 0
