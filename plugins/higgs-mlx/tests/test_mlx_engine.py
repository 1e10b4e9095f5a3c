"""The engine through the provider API: parity with mlx-lm, sampling, stops, UTF-8, limits, cancellation."""

from __future__ import annotations

import asyncio
import math

import pytest
from higgs.errors import ApiError, InvalidRequestError
from higgs.messages import (
    BlockDelta,
    ChatRequest,
    CompletionRequest,
    ImageBlock,
    Message,
    Sampling,
    StreamFinish,
    StreamStart,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from mlx_support import call_context, mlx_lm_greedy

from higgs_mlx import prompt as prompts
from higgs_mlx.engine import Chunk, Done, Engine, Job


def chat(model: str = "tiny", text: str = "hello there", **kw) -> ChatRequest:
    kw.setdefault("sampling", Sampling(temperature=0))
    return ChatRequest(model=model, messages=[Message(role="user", content=[TextBlock(text=text)])], **kw)


async def collect(stream) -> list:
    return [event async for event in stream]


def deltas(events) -> list[str]:
    return [e.delta.text for e in events if isinstance(e, BlockDelta)]


async def test_greedy_matches_mlx_lm(provider, tiny_llama):
    request = chat(max_tokens=24, sampling=Sampling(temperature=0, logprobs=True))
    lm = provider.model("tiny")
    ids = prompts.encode_chat(request, lm)
    expected, expected_text = mlx_lm_greedy(tiny_llama, ids, 24)

    response = await provider.chat(request, call_context())
    assert [e["id"] for e in response.extra["logprobs"]["content"]] == expected
    assert response.content[0].text == expected_text
    assert response.usage.input_tokens == len(ids)
    assert response.usage.output_tokens == len(expected)

    events = await collect(provider.chat_stream(request, call_context()))
    assert isinstance(events[0], StreamStart)
    assert isinstance(events[-1], StreamFinish)
    assert "".join(deltas(events)) == expected_text
    assert events[-1].usage.output_tokens == len(expected)
    assert events[-1].stop_reason == ("end_turn" if expected[-1] in lm.eos_ids else "max_tokens")


async def test_chunked_prefill_matches_mlx_lm(provider, tiny_llama):
    """A prompt longer than the prefill chunk is prefilled in pieces, as mlx-lm does with the same step."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    provider.engine.prefill_chunk = 16
    request = chat(text="one two three four five six seven eight nine ten " * 4, max_tokens=12)
    ids = prompts.encode_chat(request, provider.model("tiny"))
    assert len(ids) > 3 * 16
    model, _ = load(str(tiny_llama))
    expected = [t for t, _ in generate_step(mx.array(ids), model, max_tokens=12, prefill_step_size=16)]
    request.sampling.logprobs = True
    response = await provider.chat(request, call_context())
    assert [e["id"] for e in response.extra["logprobs"]["content"]] == expected


async def test_concurrent_requests_match_solo_runs(provider):
    a, b = chat(text="first prompt", max_tokens=20), chat(text="a different second prompt", max_tokens=20)
    solo_a = (await provider.chat(a, call_context())).content[0].text
    solo_b = (await provider.chat(b, call_context())).content[0].text
    both = await asyncio.gather(provider.chat(a, call_context()), provider.chat(b, call_context()))
    assert [r.content[0].text for r in both] == [solo_a, solo_b]


async def test_seed_makes_sampling_reproducible(provider):
    def sampled(seed: int) -> ChatRequest:
        return chat(max_tokens=24, sampling=Sampling(temperature=1.0, top_p=0.95, seed=seed))

    first = (await provider.chat(sampled(7), call_context())).content[0].text
    again = (await provider.chat(sampled(7), call_context())).content[0].text
    other = (await provider.chat(sampled(8), call_context())).content[0].text
    greedy = (await provider.chat(chat(max_tokens=24), call_context())).content[0].text
    assert first == again
    assert first != other
    assert first != greedy


async def test_stop_string_across_tokens_is_never_emitted(provider):
    request = chat(max_tokens=24, sampling=Sampling(temperature=0, logprobs=True))
    full = await provider.chat(request, call_context())
    lm = provider.model("tiny")
    pieces = [lm.tokenizer.decode([e["id"]]) for e in full.extra["logprobs"]["content"]]
    # A stop string made of the end of one multi-character token and the start of the next.
    k = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[k][-2:] + pieces[k + 1][:2]
    text = full.content[0].text
    expected = text[: text.index(stop)]

    request = chat(max_tokens=24, stop=[stop, "never-there"])
    response = await provider.chat(request, call_context())
    assert response.content[0].text == expected
    assert response.stop_reason == "stop_sequence" and response.stop_sequence == stop
    events = await collect(provider.chat_stream(request, call_context()))
    assert "".join(deltas(events)) == expected
    assert all(stop not in d for d in deltas(events))
    assert events[-1].stop_reason == "stop_sequence" and events[-1].stop_sequence == stop


async def scripted(provider, model: str, tokens: list[int], stops: list[str] | None = None):
    """Run the engine with a sampler that emits ``tokens`` in order; return its outputs."""
    import mlx.core as mx

    script = iter(tokens)

    def sampler(_logprobs):
        return mx.array([next(script, tokens[-1])])

    loop = asyncio.get_running_loop()
    outputs: asyncio.Queue = asyncio.Queue()
    job = Job(lm=provider.model(model), prompt=[1, 2, 3], max_tokens=len(tokens), sampler=sampler,
              stops=stops or [], emit=lambda item: loop.call_soon_threadsafe(outputs.put_nowait, item))
    provider.engine.submit(job)
    items = []
    while not items or not isinstance(items[-1], Done):
        items.append(await asyncio.wait_for(outputs.get(), 30))
    return items


async def test_utf8_split_across_byte_tokens_is_never_garbled(provider):
    text = "héllo €uro 😀!"
    items = await scripted(provider, "raw", list(text.encode("utf-8")))  # byte token i has id i
    chunks = [i.text for i in items if isinstance(i, Chunk)]
    assert "".join(chunks) == text
    assert all("\ufffd" not in c for c in chunks)
    assert len(chunks) > 5  # streamed incrementally, not all at the end


async def test_stop_string_split_over_single_byte_tokens(provider):
    items = await scripted(provider, "raw", list(b"abc <END> tail"), stops=["<END>"])
    chunks = [i.text for i in items if isinstance(i, Chunk)]
    assert "".join(chunks) == "abc "
    assert not any("<" in c for c in chunks)
    assert items[-1].reason == "stop_sequence" and items[-1].stop_sequence == "<END>"


async def test_eos_ends_generation_and_is_counted(provider):
    lm = provider.model("raw")
    eos = next(iter(lm.eos_ids))
    items = await scripted(provider, "raw", [*b"hi", eos, *b"after"])
    assert "".join(i.text for i in items if isinstance(i, Chunk)) == "hi"
    assert items[-1].reason == "end_turn" and items[-1].output_tokens == 3


async def test_max_tokens_capped_by_server_setting(provider):
    provider.settings.server.max_tokens = 5
    response = await provider.chat(chat(max_tokens=50), call_context())
    assert response.usage.output_tokens <= 5
    assert response.stop_reason in ("max_tokens", "end_turn")


async def test_context_overflow_is_a_400(provider):
    with pytest.raises(ApiError) as err:
        await provider.chat(chat(text="zap " * 2100, max_tokens=4), call_context())
    assert err.value.status == 400 and err.value.info.code == "context_length_exceeded"
    assert "2048" in str(err.value)


async def test_model_without_chat_template(provider):
    with pytest.raises(InvalidRequestError) as err:
        await provider.chat(chat(model="plain"), call_context())
    assert err.value.info.code == "no_chat_template"
    response = await provider.complete(CompletionRequest(model="plain", prompt=["Once upon"], max_tokens=8,
                                                         sampling=Sampling(temperature=0)), call_context())
    assert response.choices[0].text and response.usage.output_tokens == 8


async def test_completion_stream_matches_full(provider):
    request = CompletionRequest(model="tiny", prompt=["Once upon a time"], max_tokens=10,
                                sampling=Sampling(temperature=0))
    full = await provider.complete(request, call_context())
    events = await collect(provider.complete_stream(request, call_context()))
    assert "".join(deltas(events)) == full.choices[0].text
    assert events[-1].usage == full.usage


async def test_image_to_text_only_model_is_a_400(provider):
    request = ChatRequest(model="tiny", messages=[Message(role="user", content=[
        TextBlock(text="what is this"), ImageBlock(media_type="image/png", data="iVBORw0KGgo=")])])
    with pytest.raises(InvalidRequestError) as err:
        await provider.chat(request, call_context())
    assert err.value.info.code == "image_not_supported"


async def test_assistant_prefill_is_continued(provider):
    lm = provider.model("tiny")
    request = ChatRequest(model="tiny", messages=[
        Message(role="user", content=[TextBlock(text="Say hi")]),
        Message(role="assistant", content=[TextBlock(text="Sure: hel")]),
    ])
    text = prompts.render_chat(request, lm)
    assert text.endswith("<|im_start|>assistant\nSure: hel")


async def test_tool_calls_and_results_reach_the_template(provider):
    lm = provider.model("tiny")
    request = ChatRequest(model="tiny", messages=[
        Message(role="user", content=[TextBlock(text="weather?")]),
        Message(role="assistant", content=[ToolUseBlock(id="call_1", name="get_weather", input={"city": "Oslo"})]),
        Message(role="user", content=[ToolResultBlock(tool_use_id="call_1", content=[TextBlock(text="sunny")])]),
    ])
    messages = prompts.template_messages(request, lm)
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


async def test_count_tokens_is_the_rendered_prompt(provider):
    request = chat(text="count these tokens please")
    assert await provider.count_tokens(request, call_context()) == len(
        prompts.encode_chat(request, provider.model("tiny")))


async def test_disconnect_stops_generation(provider):
    stream = provider.chat_stream(chat(max_tokens=2000, sampling=Sampling(temperature=1.0, seed=1)),
                                  call_context())
    seen = 0
    async for event in stream:
        seen += isinstance(event, BlockDelta)
        if seen == 3:
            break
    await stream.aclose()
    for _ in range(100):
        if provider.engine.state()["active_requests"] == 0:
            break
        await asyncio.sleep(0.02)
    assert provider.engine.state()["active_requests"] == 0


async def test_unknown_model_and_bad_sampling(provider):
    with pytest.raises(ApiError) as err:
        await provider.chat(chat(model="nope"), call_context())
    assert err.value.status == 404
    with pytest.raises(InvalidRequestError):
        await provider.chat(chat(sampling=Sampling(top_p=3)), call_context())
    with pytest.raises(InvalidRequestError):
        await provider.chat(chat(sampling=Sampling(logit_bias={10**6: 1.0})), call_context())


async def test_non_finite_sampling_is_a_400(provider):
    """Regression: temperature NaN (json.loads accepts it) or 1e400 (overflows to inf) was sampled with."""
    for field in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        for value in (math.nan, math.inf):
            with pytest.raises(InvalidRequestError) as err:
                await provider.chat(chat(sampling=Sampling(**{field: value})), call_context())
            assert err.value.info.param == field and "finite" in err.value.info.message
    with pytest.raises(InvalidRequestError, match="finite"):
        await provider.chat(chat(sampling=Sampling(logit_bias={5: math.nan})), call_context())


def test_engine_state_shape():
    engine = Engine()
    assert set(engine.state()) >= {"active_requests", "queue_depth", "kv_cache_bytes"}


async def test_generation_error_mid_stream_is_a_stream_error(provider, monkeypatch):
    """A failure on the engine thread after some tokens ends the stream with StreamError, nothing after it."""
    import mlx.core as mx
    from higgs.messages import StreamError

    calls = {"n": 0}

    def failing_sampler(logprobs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise RuntimeError("boom on the engine thread")
        return mx.argmax(logprobs, axis=-1)

    original = provider._job_kwargs

    def patched(sampling, lm):
        return {**original(sampling, lm), "sampler": failing_sampler}

    monkeypatch.setattr(provider, "_job_kwargs", patched)
    events = await collect(provider.chat_stream(chat(max_tokens=30), call_context()))
    assert isinstance(events[-1], StreamError)
    assert "boom on the engine thread" in events[-1].error.message
    assert any(isinstance(e, BlockDelta) for e in events)
    assert not any(isinstance(e, StreamFinish) for e in events)
    with pytest.raises(ApiError, match="boom"):
        calls["n"] = 0
        await provider.chat(chat(max_tokens=30), call_context())
    # The engine keeps serving other requests.
    monkeypatch.setattr(provider, "_job_kwargs", original)
    assert (await provider.chat(chat(max_tokens=5), call_context())).usage.output_tokens >= 1


async def test_state_reports_active_requests_and_kv_bytes(provider):
    stream = provider.chat_stream(chat(max_tokens=500, sampling=Sampling(temperature=1.0, seed=3)), call_context())
    seen = 0
    async for event in stream:
        seen += isinstance(event, BlockDelta)
        if seen == 2:
            state = provider.state()
            break
    await stream.aclose()
    assert state["active_requests"] == 1 and state["kv_cache_bytes"] > 0
    assert state["models"] == ["tiny", "raw", "plain"]


async def test_default_sampling_is_greedy_unless_the_model_suggests_otherwise(provider):
    bare = ChatRequest(model="tiny", max_tokens=16, messages=[Message(role="user", content=[TextBlock(text="hi")])])
    greedy = chat(text="hi", max_tokens=16)
    assert (await provider.chat(bare, call_context())).content[0].text == \
        (await provider.chat(greedy, call_context())).content[0].text
    # A generation_config.json that asks for sampling is honoured for the fields the client left out.
    lm = provider.model("tiny")
    lm.sampling_defaults = {"temperature": 1.0, "top_k": 50}
    seeded = bare.model_copy(update={"sampling": Sampling(seed=11)})
    sampled = (await provider.chat(seeded, call_context())).content[0].text
    assert sampled == (await provider.chat(seeded, call_context())).content[0].text
    assert sampled != (await provider.chat(greedy, call_context())).content[0].text


def test_generation_config_sampling_defaults(tmp_path):
    import json

    from higgs_mlx.loader import read_sampling_defaults

    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "eos_token_id": 2}))
    assert read_sampling_defaults(tmp_path) == {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.6}))
    assert read_sampling_defaults(tmp_path) == {}
    (tmp_path / "generation_config.json").write_text("{broken")
    assert read_sampling_defaults(tmp_path) == {}


async def test_a_crashed_engine_fails_jobs_instead_of_hanging(provider):
    """If the engine thread dies, queued and new jobs fail at once (no client waits forever)."""
    engine = Engine()

    def explode(job):
        raise SystemExit("simulated fatal error")

    engine._admit = explode
    engine.start()
    loop = asyncio.get_running_loop()
    outputs: asyncio.Queue = asyncio.Queue()

    def job():
        return Job(lm=provider.model("tiny"), prompt=[1, 2], max_tokens=4, sampler=lambda x: x,
                   emit=lambda item: loop.call_soon_threadsafe(outputs.put_nowait, item))

    engine.submit(job())
    first = await asyncio.wait_for(outputs.get(), 10)
    engine._thread.join(5)
    assert engine.crashed is not None and not engine._thread.is_alive()
    engine.submit(job())
    second = await asyncio.wait_for(outputs.get(), 10)
    from higgs_mlx.engine import Failed

    assert isinstance(first, Failed) or isinstance(second, Failed)
    assert isinstance(second, Failed) and "simulated fatal error" in str(second.error)


async def test_ignore_eos_generates_through_eos(provider):
    import mlx.core as mx

    lm = provider.model("raw")
    eos = next(iter(lm.eos_ids))
    script = iter([*b"ab", eos, *b"cd"])
    loop = asyncio.get_running_loop()
    outputs: asyncio.Queue = asyncio.Queue()
    job = Job(lm=lm, prompt=[1, 2, 3], max_tokens=5, sampler=lambda _: mx.array([next(script)]), ignore_eos=True,
              emit=lambda item: loop.call_soon_threadsafe(outputs.put_nowait, item))
    provider.engine.submit(job)
    items = []
    while not items or not isinstance(items[-1], Done):
        items.append(await asyncio.wait_for(outputs.get(), 30))
    assert items[-1].reason == "max_tokens" and items[-1].output_tokens == 5
    text = "".join(i.text for i in items if isinstance(i, Chunk))
    assert text.startswith("ab") and text.endswith("cd")


async def test_long_prefill_does_not_stall_a_decoding_request(provider):
    """A long prompt is prefilled in chunks between the decode steps of a running request."""
    from higgs_mlx.sampling import RequestSampler

    provider.engine.prefill_chunk = 16
    lm = provider.model("tiny")
    loop = asyncio.get_running_loop()
    order: asyncio.Queue = asyncio.Queue()

    def job(name: str, prompt: list[int], n: int) -> Job:
        return Job(lm=lm, prompt=prompt, max_tokens=n, sampler=RequestSampler(Sampling(temperature=0)),
                   ignore_eos=True, emit=lambda item: loop.call_soon_threadsafe(order.put_nowait, (name, item)))

    provider.engine.submit(job("short", [5, 6, 7], 24))
    first = await asyncio.wait_for(order.get(), 30)  # the short request is decoding
    provider.engine.submit(job("long", list(range(300, 300 + 1200)), 4))  # 75 prefill chunks
    events = [first]
    while sum(isinstance(item, Done) for _, item in events) < 2:
        events.append(await asyncio.wait_for(order.get(), 60))
    names = [name for name, _ in events]
    short_done = next(i for i, (n, item) in enumerate(events) if n == "short" and isinstance(item, Done))
    assert short_done < names.index("long"), "the short request waited for the long prompt's prefill"


async def test_compiled_decode_steps_are_used_when_on(provider):
    """``compiled_decode`` on: every tiny llama decodes through its compiled step (checked at load)."""
    engine = provider.engine
    decoders = [engine.decoder(lm) for lm in provider.models]
    if engine.compiled_decode:
        assert all(d is not None for d in decoders) and not engine.eager_reasons
        assert engine.state()["compiled_decode_models"] == len(provider.models)
    else:
        assert decoders == [None] * len(provider.models)


def test_every_server_key_the_engine_reads_is_declared():
    """``engine_options`` reads exactly the ``[server]`` keys the provider spec declares (so they are not
    reported as unknown, and a new knob cannot be forgotten)."""
    import inspect
    import re

    import higgs_mlx
    from higgs_mlx import provider as provider_module

    source = inspect.getsource(provider_module.engine_options)
    read = set(re.findall(r'getattr\(server, "(\w+)"', source))
    for keys in re.findall(r'^\s+for key in \(([^)]*)\)', source, re.M):
        read |= set(keys.replace('"', "").replace(" ", "").split(","))
    read -= {"key", "batch"}  # batch is the kernel's own [server] key
    spec = higgs_mlx.higgs_providers()[0]
    assert read == set(spec.server_keys) == set(higgs_mlx.SERVER_KEYS)


async def test_buffers_are_kept_between_close_requests_and_returned_when_idle(provider):
    """MLX's buffer cache survives from one request to the next and is emptied after ``idle_clear_seconds``
    without work."""
    import mlx.core as mx

    engine = provider.engine
    engine.idle_clear_seconds = 0.5
    for _ in range(2):
        await provider.chat(chat(max_tokens=8), call_context())
        kept = await asyncio.wrap_future(engine.call(mx.get_cache_memory))
        assert kept > 0, "the buffers of the request just finished were returned at once"
    for _ in range(100):
        await asyncio.sleep(0.05)
        if mx.get_cache_memory() == 0:
            break
    assert mx.get_cache_memory() == 0
