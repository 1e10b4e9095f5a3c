"""The radix prefix cache: hits give the cold run's tokens, usage reports cached tokens, LRU budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from higgs.messages import ChatRequest, Message, Sampling, TextBlock
from higgs.testing import serve_in_thread
from mlx_support import call_context, make_provider

from higgs_mlx import prompt as prompts
from higgs_mlx.prefix_cache import PrefixCache

SYSTEM = "You are a careful assistant. Answer briefly and cite the rules you follow. " * 6


def _chat(text: str, system: str | None = SYSTEM, max_tokens: int = 16, **kw: Any) -> ChatRequest:
    return ChatRequest(model="tiny", system=[TextBlock(text=system)] if system else [], max_tokens=max_tokens,
                       sampling=Sampling(temperature=0, logprobs=True),
                       messages=[Message(role="user", content=[TextBlock(text=text)])], **kw)


def _ids(response: Any) -> list[int]:
    return [e["id"] for e in response.extra["logprobs"]["content"]]


@pytest.fixture
async def cold(tiny_llama: Path):
    p = make_provider([(tiny_llama, "tiny")], prefix_cache_mb=0)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def warm(tiny_llama: Path):
    p = make_provider([(tiny_llama, "tiny")])
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def test_hits_give_the_cold_tokens(cold, warm):
    """A repeated prompt, a shared system prompt with new questions, and a second turn all reuse KV
    and produce exactly what a cache-less engine produces."""
    first = _chat("What is the rule for question one?")
    again = _chat("What is the rule for question one?")
    other = _chat("Another question, quite different from the first")
    lm = warm.model("tiny")
    a, b = prompts.encode_chat(first, lm), prompts.encode_chat(other, lm)
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert shared > 100  # the system prompt

    r1 = await warm.chat(first, call_context())
    assert r1.usage.cached_tokens == 0
    r2 = await warm.chat(again, call_context())
    assert r2.usage.cached_tokens == r2.usage.input_tokens  # every token: the first output from stored logits
    r3 = await warm.chat(other, call_context())
    assert r3.usage.cached_tokens == shared
    turn2 = _chat("x")
    turn2.messages = [*first.messages, Message(role="assistant", content=[TextBlock(text=r1.content[0].text)]),
                      Message(role="user", content=[TextBlock(text="and then?")])]
    r4 = await warm.chat(turn2, call_context())
    assert r4.usage.cached_tokens >= r1.usage.input_tokens - 2  # the first turn's prompt

    for request, hit in ((first, r1), (again, r2), (other, r3), (turn2, r4)):
        reference = await cold.chat(request, call_context())
        assert reference.usage.cached_tokens == 0
        assert _ids(hit) == _ids(reference)
        assert hit.content[0].text == reference.content[0].text

    state = warm.state()
    assert state["prefix_cache_hits"] == 3 and state["prefix_cache_lookups"] == 4
    assert state["prefix_cache_bytes"] > 0 and state["prefix_cache_hit_rate"] == 0.75
    assert cold.state()["prefix_cache_lookups"] == 0


async def test_exact_repeats_sample_from_the_stored_logits(cold, warm):
    """An exact repeat is a hit of every prompt token and starts from the logits stored with the prompt: the
    same tokens as a cold run for greedy, seeded sampling and logits processors (penalty, bias), alone and
    several at once (a group, then the batch)."""
    import asyncio

    samplings = [Sampling(temperature=0, logprobs=True),
                 Sampling(temperature=0.9, top_p=0.9, seed=11, logprobs=True),
                 Sampling(temperature=0, repetition_penalty=1.3, logit_bias={"70": 2.0}, logprobs=True)]
    requests = [_chat(f"repeat me, variant {i}", max_tokens=10) for i in range(len(samplings))]
    for request, sampling in zip(requests, samplings, strict=True):
        request.sampling = sampling
    references = [await cold.chat(r, call_context()) for r in requests]
    for request in requests:
        first = await warm.chat(request, call_context())
        assert first.usage.cached_tokens < first.usage.input_tokens
    alone = [await warm.chat(r, call_context()) for r in requests]
    together = await asyncio.gather(*(warm.chat(r, call_context()) for r in requests))
    for reference, *hits in zip(references, alone, together, strict=True):
        for hit in hits:
            assert hit.usage.cached_tokens == hit.usage.input_tokens
            assert _ids(hit) == _ids(reference)


async def test_hits_inside_a_running_batch(cold, warm):
    """Concurrent requests sharing the system prompt: hits join the batch and keep the cold tokens."""
    import asyncio

    await warm.chat(_chat("prime the cache"), call_context())
    requests = [_chat(f"question number {i} about the rules", max_tokens=12 + i) for i in range(5)]
    hot = await asyncio.gather(*(warm.chat(r, call_context()) for r in requests))
    assert all(r.usage.cached_tokens > 0 for r in hot)
    for request, hit in zip(requests, hot, strict=True):
        assert _ids(hit) == _ids(await cold.chat(request, call_context()))


def _fake_cache(tokens: list[int], layers: int = 2) -> list[Any]:
    """KVCache layers whose keys at position i hold token i (so concatenations can be checked)."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    out = []
    for layer in range(layers):
        c = KVCache()
        data = mx.array(tokens, dtype=mx.float32).reshape(1, 1, -1, 1) + layer * 1000
        shape = (1, 2, len(tokens), 4)
        c.update_and_fetch(mx.broadcast_to(data, shape), mx.broadcast_to(-data, shape))
        out.append(c)
    return out


def _positions(cache: list[Any]) -> list[int]:
    keys = cache[0].keys[0, 0, : cache[0].offset, 0]
    return [int(v) for v in keys.tolist()]


def test_radix_tree_splits_and_concatenates():
    tree = PrefixCache(1 << 30)
    a = list(range(100, 140))
    b = a[:20] + list(range(200, 230))
    tree.insert(1, a, _fake_cache(a))
    tree.insert(1, b, _fake_cache(b))  # splits a's edge after 20 tokens
    assert tree.state()["prefix_cache_nodes"] == 3

    hit = tree.lookup(1, [*b[:25], 7, 7, 7])
    assert hit.tokens == 25 and _positions(hit.cache) == b[:25]
    assert hit.cache[1].keys[0, 0, :, 0].tolist() == [float(t + 1000) for t in b[:25]]
    assert hit.cache[0].values[0, 1, :, 2].tolist() == [-float(t) for t in b[:25]]
    full = tree.lookup(1, a)
    assert full.tokens == len(a) - 1 and _positions(full.cache) == a[:-1]  # one token left to compute
    assert full.logits is None
    assert tree.lookup(2, a).tokens == 0  # another model
    assert tree.lookup(1, [1, 2, 3] * 10).tokens == 0

    # A rebuilt cache grows like any KVCache.
    import mlx.core as mx

    grown = hit.cache[0]
    grown.update_and_fetch(mx.zeros((1, 2, 3, 4)), mx.zeros((1, 2, 3, 4)))
    assert grown.offset == 28 and _positions([grown])[:25] == b[:25]


def test_stored_logits_make_an_exact_repeat_a_full_hit():
    import mlx.core as mx

    tree = PrefixCache(1 << 30)
    a = list(range(100, 140))
    row = mx.arange(50, dtype=mx.float32)
    tree.insert(1, a, _fake_cache(a), row)
    kv_bytes = sum(int(c.keys[..., :40, :].nbytes + c.values[..., :40, :].nbytes) for c in _fake_cache(a))
    assert tree.nbytes == kv_bytes + int(row.nbytes)
    hit = tree.lookup(1, a)
    assert hit.tokens == len(a) and _positions(hit.cache) == a and hit.logits.tolist() == row.tolist()
    assert tree.lookup(1, a[:30]).logits is None and tree.lookup(1, a[:30]).tokens == 29
    tree.insert(1, a[:20] + [7] * 10, _fake_cache(a[:20] + [7] * 10))  # splits a's edge: its logits stay at its end
    assert tree.lookup(1, a).logits.tolist() == row.tolist()
    assert tree.lookup(1, a[:20] + [7] * 10).tokens == 29  # inserted without logits
    short = a[:20]  # a prompt that ends where the split is: its logits go on the upper node
    tree.insert(1, short, _fake_cache(short), row * 2)
    assert tree.lookup(1, short).tokens == 20 and tree.lookup(1, short).logits.tolist() == (row * 2).tolist()
    assert tree.lookup(1, a).logits.tolist() == row.tolist()
    assert tree.nbytes == sum(n.nbytes for n in tree._nodes())


def test_lru_eviction_keeps_the_budget():
    one = sum(int(k.nbytes) + int(v.nbytes) for k, v in
              [(c.keys[..., :40, :], c.values[..., :40, :]) for c in _fake_cache(list(range(40)))])
    tree = PrefixCache(int(one * 2.5))
    prompts_ = [[i] * 40 for i in (11, 12, 13)]
    tree.insert(1, prompts_[0], _fake_cache(prompts_[0]))
    tree.insert(1, prompts_[1], _fake_cache(prompts_[1]))
    assert tree.lookup(1, prompts_[0] + [5]).tokens == 40  # touch 11: 12 is now the oldest
    tree.insert(1, prompts_[2], _fake_cache(prompts_[2]))
    state = tree.state()
    assert state["prefix_cache_bytes"] <= tree.budget_bytes and state["prefix_cache_evictions"] == 1
    assert tree.lookup(1, prompts_[1] + [5]).tokens == 0
    assert tree.lookup(1, prompts_[0] + [5]).tokens == 40
    assert tree.lookup(1, prompts_[2] + [5]).tokens == 40
    small = PrefixCache(10)  # smaller than any block: nothing stays
    small.insert(1, prompts_[0], _fake_cache(prompts_[0]))
    assert small.nbytes == 0 and small.lookup(1, prompts_[0] + [5]).tokens == 0


def test_unsupported_caches_are_refused_with_a_reason(caplog):
    from mlx_lm.models.cache import KVCache, RotatingKVCache

    tree = PrefixCache(1 << 20)
    assert tree.supports(1, [KVCache(), KVCache()], "plain")
    with caplog.at_level("INFO"):
        assert not tree.supports(2, [KVCache(), RotatingKVCache(max_size=8)], "windowed")
    assert "RotatingKVCache" in tree.refused()[2] and "windowed" in caplog.text
    assert not PrefixCache(0).supports(3, [KVCache()], "off")


@pytest.fixture(scope="module")
def served(tiny_llama):
    import higgs.metrics
    from higgs.testing import build_app
    from mlx_support import LlamaArchPlugin

    import higgs_mlx

    app = build_app({"models": [{"path": str(tiny_llama), "name": "tiny"}]},
                    plugins=[("mlx", higgs_mlx), ("test-arch-llama", LlamaArchPlugin()), ("metrics", higgs.metrics)])
    with serve_in_thread(app, timeout=120) as url:
        yield url


def test_cached_tokens_in_both_apis(served):
    oai = openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0)
    claude = anthropic.Anthropic(base_url=served, api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
    cold = oai.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    hot = oai.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert hot.choices[0].message.content == cold.choices[0].message.content
    assert hot.usage.prompt_tokens == cold.usage.prompt_tokens
    assert hot.usage.prompt_tokens_details.cached_tokens == hot.usage.prompt_tokens  # an exact repeat

    message = claude.messages.create(model="tiny", max_tokens=8, system=SYSTEM, extra_body={"temperature": 0},
                                     messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == cold.choices[0].message.content
    assert message.usage.cache_read_input_tokens == cold.usage.prompt_tokens
    assert message.usage.input_tokens == 0
    turn = claude.messages.create(model="tiny", max_tokens=8, system=SYSTEM, extra_body={"temperature": 0},
                                  messages=[{"role": "user", "content": "hi, again"}])
    assert 0 < turn.usage.cache_read_input_tokens < turn.usage.cache_read_input_tokens + turn.usage.input_tokens


async def test_metrics_show_the_engine_numbers(served):
    async with aiohttp.ClientSession() as session, session.get(served + "/metrics") as resp:
        text = await resp.text()
    assert resp.status == 200
    for name in ("kv_cache_bytes", "prefix_cache_bytes", "prefix_cache_hit_rate", "batch_size", "queue_depth",
                 "compiled_traces", "compiled_trace_seconds", "prefill_seconds", "decode_seconds"):
        assert name in text, name
    # the requests of the test before: their first tokens and the time the engine spent on them
    (engine,) = [state for state in json.loads(text)["engine"].values() if isinstance(state, dict)]
    assert engine["first_tokens"] >= 1 and engine["first_token_seconds"] > 0 and engine["prefill_seconds"] > 0
