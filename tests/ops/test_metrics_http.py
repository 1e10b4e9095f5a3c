"""The metrics plugin inside the real gateway app: SDK traffic in, ``/metrics`` JSON and Prometheus out."""

from __future__ import annotations

import json

import aiohttp
import anthropic
import openai
import pytest

import higgs.metrics
from higgs.testing import FakeProvider, build_app, serve_app
from higgs.testing.fake import provider_error


def app_with_metrics(tmp_path, **settings):
    providers = {
        "higgs": FakeProvider(local=True, models=["tiny"], reply="one two three four"),
        "remote": FakeProvider(models=["gpt-x"], fail=provider_error(503, retryable=False)),
    }
    data = {"routes": [{"pattern": "^gpt-", "provider": "remote", "name": "gpts"}],
            "logging": {"metrics": {"enabled": True, "path": str(tmp_path / "m.jsonl")}}, **settings}
    return build_app(data, providers=providers, plugins=[("metrics", higgs.metrics)])


async def test_metrics_json_and_prometheus_after_sdk_traffic(tmp_path):
    app = app_with_metrics(tmp_path)
    async with serve_app(app) as url:
        oai = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        ant = anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0)
        for _ in range(3):
            await oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi there"}])
        stream = await oai.chat.completions.create(model="tiny", stream=True,
                                                   messages=[{"role": "user", "content": "hi"}])
        async for _ in stream:
            pass
        await ant.messages.create(model="tiny", max_tokens=20, messages=[{"role": "user", "content": "hello"}])
        with pytest.raises(openai.APIStatusError):
            await oai.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "x"}])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/metrics") as resp:
                assert resp.status == 200
                body = await resp.json()
            async with http.get(f"{url}/metrics/prometheus") as resp:
                assert resp.status == 200
                assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
                text = await resp.text()
            async with http.get(f"{url}/metrics?bucket_s=abc") as resp:
                assert resp.status == 400
                assert "bucket_s" in (await resp.json())["error"]["message"]

    one = body["windows"]["1m"]
    assert one["requests"] == 6
    assert one["errors"] == 1
    assert one["output_tokens"] == 5 * 4
    assert one["latency_ms"]["p50"] is not None and one["ttft_ms"]["p50"] is not None  # the stream has a TTFT
    assert body["by_model"]["tiny"]["1m"]["requests"] == 5
    assert body["by_provider"]["remote"]["1m"]["errors"] == 1
    assert "gpts" in json.dumps(body["by_route"])
    assert [v["1m"]["requests"] for k, v in body["by_format"].items() if k.startswith("anthropic->")] == [1]
    assert body["recent_errors"][0]["model"] == "gpt-x" and body["recent_errors"][0]["request_id"]
    assert body["engine"]["higgs"]["local"] is True and body["engine"]["higgs"]["calls"] == 5
    assert body["engine"]["remote"]["local"] is False
    assert 'higgs_requests_total{model="tiny",provider="higgs"' in text
    assert 'higgs_engine_calls{provider="higgs"} 5' in text
    assert "higgs_request_duration_seconds_bucket" in text

    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert len(lines) == 7  # six API calls, then the rejected /metrics?bucket_s=abc (failed requests count)
    assert {x["model"] for x in lines[:6]} == {"tiny", "gpt-x"}
    assert lines[6]["endpoint"] == "/metrics" and lines[6]["status"] == 400
    assert all(x["request_id"] for x in lines)


async def test_two_apps_in_one_process_do_not_mix(tmp_path):
    first, second = app_with_metrics(tmp_path / "a"), app_with_metrics(tmp_path / "b")
    async with serve_app(first) as url_a, serve_app(second) as url_b:
        oai = openai.AsyncOpenAI(base_url=f"{url_a}/v1", api_key="x", max_retries=0)
        await oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        async with aiohttp.ClientSession() as http:
            a = await (await http.get(f"{url_a}/metrics")).json()
            b = await (await http.get(f"{url_b}/metrics")).json()
    assert a["totals"]["requests"] == 1
    assert b["totals"]["requests"] == 0


async def test_metrics_behind_api_key(tmp_path):
    app = app_with_metrics(tmp_path, server={"api_key": "s3cret"})
    async with serve_app(app) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as resp:
            assert resp.status == 401
        async with http.get(f"{url}/metrics", headers={"authorization": "Bearer s3cret"}) as resp:
            assert resp.status == 200


async def test_retention_window_through_http(tmp_path):
    app = app_with_metrics(tmp_path, retention={"minutes": 1})
    async with serve_app(app) as url:
        oai = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        for _ in range(3):
            await oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        store = app[higgs.metrics.METRICS].store
        async with aiohttp.ClientSession() as http:
            fresh = await (await http.get(f"{url}/metrics")).json()
            real_clock = store.clock
            store.clock = lambda: real_clock() + 61  # a minute later: the samples left the retention window
            # Under load the first report can take long enough to count as expensive and be reused; drop it.
            app[higgs.metrics.METRICS]._cached = None
            later = await (await http.get(f"{url}/metrics")).json()
    assert fresh["retention_minutes"] == 1 and list(fresh["windows"]) == ["retention"]
    assert fresh["windows"]["retention"]["requests"] == 3
    assert later["windows"]["retention"]["requests"] == 0 and later["by_model"] == {}
    assert later["totals"]["requests"] == 3  # lifetime counters are not subject to retention
    assert store.snapshot() == []


async def test_expensive_reports_are_shared_cheap_ones_fresh():
    from higgs.config import HiggsSettings

    sink = higgs.metrics.MetricsSink(HiggsSettings())
    calls = []

    def slow_report(bucket_s=None):
        calls.append(bucket_s)
        import time

        time.sleep(0.3)
        return {"n": len(calls)}

    sink.store.report = slow_report
    first, second = await sink.report(), await sink.report()
    assert first is second and len(calls) == 1  # reused: it took 0.3 s, so it is good for 0.6 s
    await sink.report(bucket_s=5.0)
    assert len(calls) == 2  # another bucket size is another report
    sink.store.report = lambda bucket_s=None: calls.append(bucket_s) or {"n": len(calls)}
    sink._cached = None
    a, b = await sink.report(), await sink.report()
    assert a is not b and len(calls) == 4  # cheap reports are recomputed every time
