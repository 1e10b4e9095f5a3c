"""Continuous batching: batched output equals solo output, admission control, cancellation, state."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
from higgs.errors import ApiError
from higgs.messages import ChatRequest, Message, ResponseFormat, Sampling, TextBlock
from mlx_support import call_context, make_provider

from higgs_mlx.engine import Chunk, Done, Engine, Failed, Job
from higgs_mlx.prefix_cache import MIN_TOKENS
from higgs_mlx.sampling import RequestSampler, make_processors


def _job(lm: Any, prompt: list[int], n: int, outputs: asyncio.Queue, name: str, sampling: Sampling | None = None,
         **kw: Any) -> Job:
    loop = asyncio.get_running_loop()
    sampling = sampling or Sampling(temperature=0)
    return Job(lm=lm, prompt=prompt, max_tokens=n, sampler=RequestSampler(sampling, default_temperature=0.0),
               processors=make_processors(sampling), top_logprobs=0, ignore_eos=True,
               emit=lambda item: loop.call_soon_threadsafe(outputs.put_nowait, (name, item)), **kw)


async def _run(engine: Engine, specs: list[tuple[str, list[int], int, Sampling | None, float]], lm: Any,
               leaving: Collection[str] = ()) -> dict[str, list[int]]:
    """Submit ``(name, prompt, max_tokens, sampling, delay_in_tokens)``; tokens produced per name.

    A spec with a delay joins once the first job has produced that many tokens (mid-flight); the jobs named
    in ``leaving`` are cancelled after their second token (a client that left)."""
    outputs: asyncio.Queue = asyncio.Queue()
    tokens: dict[str, list[int]] = {name: [] for name, *_ in specs}
    jobs: dict[str, Job] = {}
    later = sorted((s for s in specs if s[4] > 0), key=lambda s: s[4])

    def submit(name: str, prompt: list[int], n: int, sampling: Sampling | None) -> None:
        jobs[name] = _job(lm, prompt, n, outputs, name, sampling)
        engine.submit(jobs[name])

    for name, prompt, n, sampling, delay in specs:
        if delay == 0:
            submit(name, prompt, n, sampling)
    done = 0
    produced = 0
    while done < len(specs):
        name, item = await asyncio.wait_for(outputs.get(), 60)
        if jobs[name].cancelled:
            continue
        if isinstance(item, Chunk) and item.logprobs:
            tokens[name].extend(e["id"] for e in item.logprobs)
            produced += 1
            if name in leaving and len(tokens[name]) == 2:
                jobs[name].cancel()
                done += 1
        elif isinstance(item, Done):
            done += 1
        elif isinstance(item, Failed):
            raise item.error
        while later and produced >= later[0][4]:
            lname, lprompt, ln, lsampling, _ = later.pop(0)
            submit(lname, lprompt, ln, lsampling)
    return tokens


@pytest.fixture(params=["eager", "compiled"])
async def batch_provider(request: pytest.FixtureRequest, tiny_llama: Path):
    p = make_provider([(tiny_llama, "tiny")], prefix_cache_mb=0, compiled_decode=request.param == "compiled")
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def _ids(seed: int, n: int) -> list[int]:
    """``n`` pseudo-random in-vocabulary token ids (the tiny models have 384 tokens)."""
    import random

    rng = random.Random(seed)
    return [rng.randrange(3, 380) for _ in range(n)]


SPECS: list[tuple[str, list[int], int, Sampling | None, float]] = [
    ("short", _ids(1, 3), 18, None, 0),
    ("long", _ids(2, 100), 10, None, 0),
    ("medium", _ids(3, 30), 24, None, 0),
    ("seeded", _ids(4, 20), 16, Sampling(temperature=0.9, top_p=0.95, seed=7), 0),
    ("penalty", _ids(5, 25), 16, Sampling(temperature=0, repetition_penalty=1.3, logit_bias={"65": 0.3}), 0),
    ("late", _ids(6, 60), 12, None, 4),
    ("later", _ids(7, 6), 8, Sampling(temperature=1.0, min_p=0.05, seed=3), 9),
]


async def test_batched_output_equals_solo_output(batch_provider):
    """Mixed lengths, mixed sampling (greedy, seeded top-p, penalties + bias), jobs joining mid-flight."""
    engine, lm = batch_provider.engine, batch_provider.model("tiny")
    assert engine.batch
    solo = {}
    for spec in SPECS:
        solo.update(await _run(engine, [(*spec[:4], 0)], lm))
    assert engine.peak_batch == 1
    batched = await _run(engine, SPECS, lm)
    assert engine.peak_batch >= 5, "the jobs did not decode together"
    assert engine.grouped_prefills >= 1, "the prompts sent together were not prefilled together"
    for name, *_ in SPECS:
        assert batched[name] == solo[name], name
    assert {name: len(t) for name, t in batched.items()} == {name: n for name, _, n, *_ in SPECS}
    for _ in range(100):  # the last Done is emitted just before the batch lets its row go
        state = engine.state()
        if state["batch_size"] == 0 and state["active_requests"] == 0:
            break
        await asyncio.sleep(0.02)
    assert state["batch_size"] == 0 and state["active_requests"] == 0 and state["kv_cache_bytes"] == 0


async def test_prompts_prefilled_one_by_one_give_the_same_tokens(batch_provider):
    engine, lm = batch_provider.engine, batch_provider.model("tiny")
    together = await _run(engine, SPECS, lm)
    engine.batch_prefill = False
    grouped = engine.grouped_prefills
    assert await _run(engine, SPECS, lm) == together
    assert engine.grouped_prefills == grouped


async def test_prompts_with_prefix_hits_are_prefilled_together(batch_provider, tiny_llama: Path,
                                                                monkeypatch: pytest.MonkeyPatch):
    """Prompts that start with cached tokens (a chat template's first tokens, a shared system prompt) still
    join a group prefill, with their cached part, and give the tokens of cold solo runs."""
    from higgs_mlx import engine as engine_module

    head = _ids(20, 24)
    specs: list[tuple[str, list[int], int, Sampling | None, float]] = [
        (f"p{i}", [*head[: 18 + 2 * i], *_ids(30 + i, 3 + 9 * i)], 10, sampling, 0)
        for i, sampling in enumerate([None, None, Sampling(temperature=0.8, seed=5), None,
                                      Sampling(temperature=0, repetition_penalty=1.2)])]
    specs.append(("exact", list(head), 8, None, 0))  # all but its last token cached
    cold = {}
    for spec in specs:  # batch_provider has no prefix cache
        cold.update(await _run(batch_provider.engine, [spec], batch_provider.model("tiny")))
    groups: list[list[int]] = []  # the cached tokens of each group's rows
    prefill_group = engine_module.prefill_group

    def spy(jobs: list[Job], *args: Any) -> Any:
        groups.append([job.pos for job in jobs])
        return prefill_group(jobs, *args)

    monkeypatch.setattr(engine_module, "prefill_group", spy)
    provider = make_provider([(tiny_llama, "tiny")], compiled_decode=batch_provider.engine.compiled_decode)
    await provider.start()
    try:
        engine, lm = provider.engine, provider.model("tiny")
        await _run(engine, [("head", [*head, 5, 6], 2, None, 0)], lm)
        assert await _run(engine, specs, lm) == cold
        assert engine.state()["prefix_cache_hits"] >= len(specs)
        assert any(len(rows) >= 2 and min(rows) > 0 for rows in groups), groups
        # what the group stored (each row's KV and last logits) serves the exact repeats
        for spec in specs:
            before = engine.prefix.hit_tokens
            assert await _run(engine, [spec], lm) == {spec[0]: cold[spec[0]]}
            assert engine.prefix.hit_tokens - before == len(spec[1])  # every token: an exact repeat
    finally:
        await provider.close()


async def test_a_long_prompt_keeps_its_interleaved_chunks_beside_a_group(tiny_llama: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    """Short prompts that arrive while a long one is halfway through its chunks are grouped among
    themselves; the long prompt's rest is never pulled into their group (its chunks bound the pauses of
    the running streams)."""
    from higgs_mlx import engine as engine_module

    groups: list[list[int]] = []  # the prompt lengths of each group
    prefill_group = engine_module.prefill_group

    def spy(jobs: list[Job], *args: Any) -> Any:
        groups.append([len(job.prompt) for job in jobs])
        return prefill_group(jobs, *args)

    monkeypatch.setattr(engine_module, "prefill_group", spy)
    provider = make_provider([(tiny_llama, "tiny")], prefix_cache_mb=0, prefill_chunk=64, interleave_chunk=16,
                             interleave_ms=0)
    await provider.start()
    try:
        engine, lm = provider.engine, provider.model("tiny")
        specs: list[tuple[str, list[int], int, Sampling | None, float]] = [
            ("runner", _ids(50, 10), 40, None, 0), ("long", _ids(51, 120), 4, None, 1),
            ("short1", _ids(52, 20), 4, None, 5), ("short2", _ids(53, 24), 4, None, 5)]
        together = await _run(engine, specs, lm)
        solo = {}
        for name, prompt, n, sampling, _ in specs:
            solo.update(await _run(engine, [(name, prompt, n, sampling, 0)], lm))
        assert together == solo
        assert [20, 24] in groups or [24, 20] in groups, groups
        assert not any(120 in group for group in groups), groups
    finally:
        await provider.close()


async def test_an_idle_engine_gathers_the_announced_requests_into_one_prefill(tiny_llama: Path,
                                                                              monkeypatch: pytest.MonkeyPatch):
    """Requests announced with ``expect`` and submitted 30 ms apart (their templates still rendering) start as
    one group prefill; without the gather the first starts alone; an announcement that is never released
    holds the engine back for ``gather_ms`` only."""
    import threading
    import time

    from higgs_mlx import engine as engine_module

    groups: list[int] = []
    prefill_group = engine_module.prefill_group

    def spy(jobs: list[Job], *args: Any) -> Any:
        groups.append(len(jobs))
        return prefill_group(jobs, *args)

    monkeypatch.setattr(engine_module, "prefill_group", spy)
    provider = make_provider([(tiny_llama, "tiny")], prefix_cache_mb=0, gather_ms=5000)
    await provider.start()
    try:
        engine, lm = provider.engine, provider.model("tiny")
        specs = [(f"r{i}", _ids(40 + i, 20 + 5 * i), 6, None, 0.0) for i in range(4)]
        solo = {}
        for spec in specs:
            solo.update(await _run(engine, [spec], lm))
        assert groups == []

        async def burst() -> tuple[dict[str, list[int]], float]:
            loop = asyncio.get_running_loop()
            outputs: asyncio.Queue = asyncio.Queue()
            arrivals = [engine.expect() for _ in specs]
            jobs = [_job(lm, prompt, n, outputs, name) for name, prompt, n, *_ in specs]

            def prepare_and_submit() -> None:  # what the provider's worker threads do, one after another
                for job, arrival in zip(jobs, arrivals, strict=True):
                    time.sleep(0.03)
                    engine.submit(job, arrival)

            started = time.perf_counter()
            thread = threading.Thread(target=prepare_and_submit)
            thread.start()
            tokens: dict[str, list[int]] = {name: [] for name, *_ in specs}
            first = 0.0
            done = 0
            while done < len(specs):
                name, item = await asyncio.wait_for(outputs.get(), 60)
                if isinstance(item, Chunk) and item.logprobs:
                    first = first or time.perf_counter() - started
                    tokens[name].extend(e["id"] for e in item.logprobs)
                elif isinstance(item, Done):
                    done += 1
            await loop.run_in_executor(None, thread.join)
            return tokens, first

        gathered, first = await burst()
        assert gathered == solo
        assert groups == [4], groups
        assert first < 2  # the last arrival ended the wait, not the 5 s bound
        groups.clear()
        engine.gather_ms = 0
        assert (await burst())[0] == solo
        assert 4 not in groups, groups  # the first request started alone
        engine.gather_ms = 300
        forgotten = engine.expect()  # a request that never comes
        groups.clear()
        tokens, first = await burst()
        assert tokens == solo and groups == [4]
        assert first >= 0.3  # the wait ran to its bound: the forgotten request was still announced
        forgotten.release()
        forgotten.release()  # idempotent
        assert engine.state()["announced_requests"] == 0
    finally:
        await provider.close()


def test_requests_over_http_release_their_announcements(tiny_llama: Path):
    """Every way a request ends (streamed, whole, completions, a refused request, a client that leaves
    mid-stream) releases its announcement, so an idle engine never waits for requests that are not coming."""
    import time

    import higgs.metrics
    import httpx
    import openai
    from higgs.testing import build_app, serve_in_thread
    from mlx_support import LlamaArchPlugin

    import higgs_mlx

    app = build_app({"server": {"gather_ms": 5000}, "models": [{"path": str(tiny_llama), "name": "tiny"}]},
                    plugins=[("mlx", higgs_mlx), ("test-arch-llama", LlamaArchPlugin()), ("metrics", higgs.metrics)])
    with serve_in_thread(app, timeout=120) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": "hello there"}]
        started = time.perf_counter()
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=4)
        "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=4, stream=True) if c.choices)
        client.completions.create(model="tiny", prompt="once upon", max_tokens=4)
        list(client.completions.create(model="tiny", prompt="once upon", max_tokens=4, stream=True))
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, n=2)
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=60, json={
                "model": "tiny", "messages": messages, "max_tokens": 500, "stream": True}) as r:
            next(r.iter_lines())  # leave after the first line
        assert time.perf_counter() - started < 5  # no request waited for the 5 s bound
        for _ in range(100):
            engine = httpx.get(url + "/metrics", timeout=10).json()["engine"]
            state = next(v for v in engine.values() if isinstance(v, dict) and "announced_requests" in v)
            if state["announced_requests"] == 0 and state["active_requests"] == 0:
                break
            time.sleep(0.05)
        assert state["announced_requests"] == 0 and state["active_requests"] == 0


@pytest.mark.parametrize("compiled", [False, True])
async def test_random_traffic_with_shared_prefixes_gives_the_solo_tokens(tiny_llama: Path, compiled: bool):
    """Seeded random traffic: prompts sharing three heads (some cut short, some exact repeats), mixed
    sampling, arrivals mid-flight and clients leaving after two tokens, three rounds through one engine with
    the prefix cache, groups and the gather; every request that stays gets the tokens of a cold solo run."""
    import random

    rng = random.Random(5)
    heads = [_ids(60 + i, rng.randrange(16, 60)) for i in range(3)]
    specs: list[tuple[str, list[int], int, Sampling | None, float]] = []
    for i in range(14):
        head = rng.choice(heads)
        prompt = head[: rng.randrange(1, len(head) + 1)] + _ids(80 + i, rng.randrange(0, 30))
        if specs and rng.random() < 0.2:
            prompt = list(rng.choice(specs)[1])
        sampling = rng.choice([None, Sampling(temperature=0.8, seed=rng.randrange(100)),
                               Sampling(temperature=0, repetition_penalty=1.2)])
        specs.append((f"j{i}", prompt, rng.randrange(3, 14), sampling, rng.choice([0, 0, 0, 2, 5])))
    assert len({tuple(prompt) for _, prompt, *_ in specs}) < len(specs)  # the seed gives exact repeats
    cold = make_provider([(tiny_llama, "tiny")], prefix_cache_mb=0, batch=False)
    await cold.start()
    try:
        solo = {}
        for spec in specs:
            solo.update(await _run(cold.engine, [(*spec[:4], 0)], cold.model("tiny")))
    finally:
        await cold.close()
    provider = make_provider([(tiny_llama, "tiny")], compiled_decode=compiled, gather_ms=5)
    await provider.start()
    try:
        engine, lm = provider.engine, provider.model("tiny")
        left = 0
        for _ in range(3):
            leaving = {name for name, *_ in specs if rng.random() < 0.15}
            left += len(leaving)
            got = await _run(engine, specs, lm, leaving=leaving)
            assert {n: t for n, t in got.items() if n not in leaving} == {
                n: t for n, t in solo.items() if n not in leaving}
        state = engine.state()
        assert left and state["grouped_prompts"] > 0 and state["prefix_cache_hits"] > len(specs)
        for _ in range(100):  # the last rows leave the batch just after their Done
            if engine.state()["active_requests"] == 0:
                break
            await asyncio.sleep(0.02)
        assert engine.state()["active_requests"] == 0 and engine.state()["announced_requests"] == 0
    finally:
        await provider.close()


async def test_batched_output_equals_the_unbatched_engine(tiny_llama: Path):
    off = make_provider([(tiny_llama, "tiny")], batch=False, prefix_cache_mb=0)
    await off.start()
    try:
        unbatched = await _run(off.engine, SPECS, off.model("tiny"))
        assert off.engine.peak_batch == 0
    finally:
        await off.close()
    on = make_provider([(tiny_llama, "tiny")], prefix_cache_mb=0)
    await on.start()
    try:
        assert await _run(on.engine, SPECS, on.model("tiny")) == unbatched
    finally:
        await on.close()


async def test_padded_prefill_gives_the_same_tokens(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch):
    """``prefill_padding``: the last (partial) chunk of a prompt padded to a multiple of 64 and groups to slot
    row counts; the tokens equal the unpadded engine's for chunked prompts, groups with spare rows, joins
    mid-flight, exact prefix-cache hits and hits followed by a new suffix."""
    from mlx_lm.models import llama

    extended = [(f"{name}+", [*prompt, *_ids(10 + i, 5 + 7 * i)], n, sampling, 0.0)
                for i, (name, prompt, n, sampling, _) in enumerate(SPECS)]
    shapes: list[tuple[int, ...]] = []  # of the prefill calls (more than one token per row)
    call = llama.Model.__call__

    def spy(self: Any, inputs: Any, *args: Any, **kw: Any) -> Any:
        if inputs.shape[1] > 1:
            shapes.append(tuple(inputs.shape))
        return call(self, inputs, *args, **kw)

    monkeypatch.setattr(llama.Model, "__call__", spy)

    async def three_runs(**server: Any) -> list[dict[str, list[int]]]:
        provider = make_provider([(tiny_llama, "tiny")], prefill_chunk=64, **server)
        await provider.start()
        shapes.clear()  # not the start-up checks
        try:
            engine, lm = provider.engine, provider.model("tiny")
            runs = [await _run(engine, SPECS, lm), await _run(engine, SPECS, lm), await _run(engine, extended, lm)]
            cacheable = sum(len(prompt) >= MIN_TOKENS for _, prompt, *_ in SPECS)  # shorter ones are not cached
            assert engine.grouped_prefills >= 1 and engine.state()["prefix_cache_hits"] >= 2 * cacheable
            return runs
        finally:
            await provider.close()

    plain = await three_runs()
    assert any(width % 64 for _, width in shapes)  # unpadded, lengths vary
    assert await three_runs(prefill_padding=True) == plain
    assert shapes and all(width % 64 == 0 and rows in (1, 2, 4, 8, 16) for rows, width in shapes), shapes
    assert any(rows > 1 for rows, _ in shapes), "no group was prefilled"


def _chat(text: str, **kw: Any) -> ChatRequest:
    kw.setdefault("sampling", Sampling(temperature=0))
    return ChatRequest(model="tiny", messages=[Message(role="user", content=[TextBlock(text=text)])], **kw)


SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                          "rank": {"type": "integer"}}, "required": ["city", "rank"],
          "additionalProperties": False}


async def test_constraints_and_stops_inside_a_batch(batch_provider):
    """json_schema constrained rows and stop strings beside free rows give their solo answers."""
    import json

    requests = [
        _chat("give me json", max_tokens=40, response_format=ResponseFormat(type="json_schema", json_schema=SCHEMA)),
        _chat("free text please", max_tokens=30),
        _chat("another one", max_tokens=30, sampling=Sampling(temperature=0.8, seed=11)),
        _chat("json object", max_tokens=40, response_format=ResponseFormat(type="json_object")),
    ]
    solo = [(await batch_provider.chat(r, call_context())).content[0].text for r in requests]
    stop = solo[1][3:5]
    requests.append(_chat("free text please", max_tokens=30, stop=[stop]))
    solo.append((await batch_provider.chat(requests[-1], call_context())).content[0].text)
    together = await asyncio.gather(*(batch_provider.chat(r, call_context()) for r in requests))
    assert [r.content[0].text for r in together] == solo
    assert batch_provider.engine.peak_batch >= 4
    parsed = json.loads(solo[0])
    assert set(parsed) == {"city", "rank"} and isinstance(parsed["rank"], int)
    assert isinstance(json.loads(solo[3]), dict)
    assert together[4].stop_reason == "stop_sequence" and stop not in together[4].content[0].text


@pytest.mark.parametrize("model_type", ["qwen3_next", "mistral"])
async def test_other_cache_kinds_batch_correctly(tmp_path: Path, model_type: str):
    """SSM-hybrid (ArraysCache) and sliding-window (RotatingKVCache) caches batch too."""
    from higgs.specs import ArchitectureSpec
    from mlx_support import ARCHES

    from higgs_mlx.testing import build_tiny_model

    extra = {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]} \
        if model_type == "mistral" else {}
    path = build_tiny_model(model_type, tmp_path / model_type, seed=5, **extra)
    module = {"qwen3_next": "mlx_lm.models.qwen3_next", "mistral": "mlx_lm.models.llama"}[model_type]
    ARCHES[model_type] = ArchitectureSpec(name=model_type, model_types=(model_type,), module=module)
    try:
        p = make_provider([(path, "tiny")])
        await p.start()
        try:
            lm = p.model("tiny")
            specs = [s for s in SPECS if s[0] in ("short", "medium", "late", "penalty")]
            solo = {}
            for spec in specs:
                solo.update(await _run(p.engine, [(*spec[:4], 0)], lm))
            assert await _run(p.engine, specs, lm) == solo
            assert p.engine.peak_batch >= 3
            assert id(lm) in p.engine.prefix.refused(), "the prefix cache must be off for this cache kind"
        finally:
            await p.close()
    finally:
        ARCHES.pop(model_type, None)


async def test_full_queue_is_a_503_with_retry_after(tiny_llama: Path):
    p = make_provider([(tiny_llama, "tiny")], max_batch=1, max_queue=1)
    await p.start()
    try:
        lm = p.model("tiny")
        outputs: asyncio.Queue = asyncio.Queue()
        jobs = [_job(lm, _ids(8, 3), 200, outputs, f"j{i}") for i in range(3)]
        for job in jobs:
            p.engine.submit(job)
        name, item = await asyncio.wait_for(outputs.get(), 30)
        while not isinstance(item, Failed):
            name, item = await asyncio.wait_for(outputs.get(), 30)
        assert name == "j2"
        assert isinstance(item.error, ApiError) and item.error.status == 503
        assert item.error.info.retry_after and item.error.info.retry_after >= 1
        assert p.engine.state()["rejected_requests"] == 1
        for job in jobs:
            job.cancel()
        await _idle(p.engine)  # cancellations land at the engine's next step, later on a loaded machine
        _drain(outputs)
        with pytest.raises(ApiError) as err:  # through the provider: the same 503
            blockers = [_job(lm, _ids(8, 3), 200, outputs, f"b{i}") for i in range(2)]
            p.engine.submit(blockers[0])
            await asyncio.wait_for(outputs.get(), 30)  # b0 holds the one batch slot ...
            p.engine.submit(blockers[1])  # ... and b1 the one queue place
            try:
                await p.chat(_chat("hi", max_tokens=3), call_context())
            finally:
                for job in blockers:
                    job.cancel()
        assert err.value.status == 503 and err.value.info.kind == "overloaded"
    finally:
        await p.close()


async def test_queued_and_running_jobs_are_cancelled(tiny_llama: Path):
    p = make_provider([(tiny_llama, "tiny")], max_batch=1, max_queue=4)
    await p.start()
    try:
        lm = p.model("tiny")
        outputs: asyncio.Queue = asyncio.Queue()
        running = _job(lm, _ids(9, 3), 10_000, outputs, "running")
        queued = _job(lm, _ids(10, 3), 10_000, outputs, "queued")
        p.engine.submit(running)
        await asyncio.wait_for(outputs.get(), 30)  # running is decoding
        p.engine.submit(queued)
        await asyncio.sleep(0.2)
        assert p.engine.state()["queue_depth"] == 1
        queued.cancel()
        running.cancel()
        for _ in range(100):
            state = p.engine.state()
            if state["active_requests"] == 0 and state["queue_depth"] == 0:
                break
            await asyncio.sleep(0.05)
        assert state["active_requests"] == 0 and state["queue_depth"] == 0 and state["batch_size"] == 0
        assert not any(name == "queued" for name, _ in _drain(outputs)), "a cancelled queued job started"
        reply = await p.chat(_chat("still alive", max_tokens=4), call_context())  # the engine goes on
        assert reply.usage.output_tokens == 4
    finally:
        await p.close()


async def _idle(engine: Engine, seconds: float = 30.0) -> None:
    """Wait until the engine runs and queues nothing."""
    for _ in range(int(seconds / 0.05)):
        state = engine.state()
        if state["active_requests"] == 0 and state["queue_depth"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the engine is still busy: {engine.state()}")


def _drain(q: asyncio.Queue) -> list[Any]:
    items = []
    while not q.empty():
        items.append(q.get_nowait())
    return items


def test_engine_options_from_server_settings():
    from higgs.config import ServerSettings

    from higgs_mlx.engine import DEFAULT_PREFIX_CACHE_BYTES
    from higgs_mlx.loader import ModelLoadError
    from higgs_mlx.provider import engine_options

    server = ServerSettings(batch=False, max_batch=4, max_queue=0, prefix_cache_mb=1.5)
    assert engine_options(server) == {"batch": False, "max_batch": 4, "max_queue": 0,
                                      "prefix_cache_bytes": int(1.5 * 2**20)}
    with pytest.raises(ModelLoadError, match="max_batch"):
        engine_options(ServerSettings(max_batch="many"))
    with pytest.raises(ModelLoadError, match="prefix_cache_mb"):
        engine_options(ServerSettings(prefix_cache_mb=-1))
    assert engine_options(ServerSettings(attention_kernel=False, compiled_decode=True)) == {
        "attention_kernel": False, "compiled_decode": True, "prefix_cache_bytes": DEFAULT_PREFIX_CACHE_BYTES}
    with pytest.raises(ModelLoadError, match="attention_kernel must be true or false"):
        engine_options(ServerSettings(attention_kernel="yes"))
    assert engine_options(ServerSettings(prefill_padding=True))["prefill_padding"] is True
    assert engine_options(ServerSettings(gather_ms=0))["gather_ms"] == 0.0
    with pytest.raises(ModelLoadError, match="gather_ms must be a number"):
        engine_options(ServerSettings(gather_ms="soon"))


async def test_overload_over_http_in_each_format(tiny_llama: Path):
    """A full engine answers 503 with retry-after in each format (Anthropic: overloaded_error); a client that
    hangs up frees its slot for the next request."""
    import aiohttp
    from higgs.testing import serve_in_thread
    from mlx_support import mlx_app

    app = mlx_app({"server": {"max_batch": 1, "max_queue": 0},
                   "models": [{"path": str(tiny_llama), "name": "tiny"}]})
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000,
            "ignore_eos": True, "temperature": 0}
    with serve_in_thread(app, timeout=120) as url:
        async with aiohttp.ClientSession() as session:
            hog = await session.post(url + "/v1/chat/completions", json={**chat, "stream": True})
            assert hog.status == 200
            await hog.content.readline()  # generating now
            async with session.post(url + "/v1/chat/completions", json={**chat, "max_tokens": 4}) as busy:
                body = await busy.json()
                assert busy.status == 503 and int(busy.headers["retry-after"]) >= 1
                assert "busy" in body["error"]["message"]
            async with session.post(url + "/v1/messages", json={**chat, "max_tokens": 4}) as busy:
                body = await busy.json()
                assert busy.status in (503, 529) and int(busy.headers["retry-after"]) >= 1, body
                assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
            hog.close()  # the client hangs up: its slot frees at the next step
            for _ in range(100):
                async with session.post(url + "/v1/chat/completions", json={**chat, "max_tokens": 4}) as again:
                    if again.status != 503:
                        break
                await asyncio.sleep(0.05)
            assert again.status == 200


def test_prefill_padding_from_the_config_answers_like_the_default_over_http(tiny_llama: Path):
    """``[server] prefill_padding = true`` through the real app and the OpenAI SDK: the same greedy answers,
    streamed and not, as a server without it; a non-boolean value is refused at start-up."""
    import openai
    from higgs.config import ServerSettings
    from higgs.testing import serve_in_thread
    from mlx_support import mlx_app

    from higgs_mlx.loader import ModelLoadError
    from higgs_mlx.provider import engine_options

    messages = [{"role": "user", "content": "a prompt of a few words, not a multiple of 64 tokens " * 3}]
    answers = []
    for server in ({}, {"prefill_padding": True}):
        app = mlx_app({"server": server, "models": [{"path": str(tiny_llama), "name": "tiny"}]})
        with serve_in_thread(app, timeout=120) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
            parts = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0,
                                                   stream=True)
            streamed = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
            answers.append((whole.choices[0].message.content, streamed))
    assert answers[0] == answers[1] and answers[0][0] == answers[0][1] and answers[0][0]
    with pytest.raises(ModelLoadError, match="prefill_padding must be true or false"):
        engine_options(ServerSettings(prefill_padding="on"))


def test_interleaved_chunk_follows_the_measured_prefill_speed():
    """While others decode, a prompt is prefilled in what its model does in ``interleave_ms`` (whole
    ``interleave_chunk``s, at least one, at most ``prefill_chunk``); unknown speed: one chunk."""
    from types import SimpleNamespace

    engine = Engine(interleave_chunk=128, interleave_ms=50, prefill_chunk=2048)
    lm = SimpleNamespace(model=object())
    engine._active = [SimpleNamespace(lm=lm, prefilling=True)]  # type: ignore[list-item]
    assert engine._interleave_size() == 128
    engine._measured(lm, 1000, 0.1)  # type: ignore[arg-type]  # 10k tokens/s: 500 tokens in 50 ms
    assert engine._interleave_size() == 384
    engine._measured(lm, 1000, 10.0)  # type: ignore[arg-type]  # a chunk that waited (kernel compile)
    assert engine._interleave_size() == 384
    engine._measured(lm, 1000, 0.001)  # type: ignore[arg-type]  # the best recent speed counts, capped
    assert engine._interleave_size() == 2048
    engine.interleave_ms = 0
    assert engine._interleave_size() == 128
