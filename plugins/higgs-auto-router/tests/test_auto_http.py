"""End to end through the gateway with the official SDKs; a tiny random-weight model is the classifier.

The classifier's answer is steered where a test needs a particular route: an extra logits processor adds
a bias to the tokens of one answer, and the constraint still decides what may be decoded.
"""

from __future__ import annotations

import random
import string
import threading
import time

import anthropic
import openai
import pytest
from autorouter_support import CANDIDATES, Records, auto_app, make_provider
from higgs.server import keys
from higgs.testing import FakeProvider, serve_in_thread

import higgs_auto_router
from higgs_auto_router.classifier import MlxClassifier
from higgs_auto_router.prompt import Candidate, answers

VALID_RULES = {"auto:code", "auto:chat", "auto:math", "pattern:fallback"}


class Steer:
    """A logits processor that favours, step by step, the tokens spelling ``answer`` (the constraint still
    decides what may be decoded)."""

    def __init__(self, tokenizer, answer: str, bias: float = 60.0) -> None:
        self.ids = list(tokenizer.encode(answer, add_special_tokens=False))
        self.bias = bias
        self.start: int | None = None

    def __call__(self, tokens, logits):
        import mlx.core as mx

        if self.start is None or tokens.size < self.start:  # a new job (processors are reused across jobs)
            self.start = tokens.size
        step = tokens.size - self.start
        if step >= len(self.ids):
            return logits
        row = [0.0] * logits.shape[-1]
        row[self.ids[step]] = self.bias
        return logits + mx.array(row, dtype=logits.dtype)


class Gate:
    """A logits processor that holds the engine thread on its first call until released: the generation is
    provably running when the timeout fires."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, tokens, logits):
        self.calls += 1
        self.entered.set()
        self.release.wait(30)
        return logits


def wait_idle(engine, seconds: float = 2.0) -> bool:
    """Whether the engine has no job running or queued within ``seconds`` (a cancelled job is dropped at the
    engine's next step)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = engine.state()
        if state["active_requests"] == 0 and state["queue_depth"] == 0:
            return True
        time.sleep(0.01)
    return False


def wait_warm(seconds: float = 60.0) -> None:
    """Wait for the classifier warm-up the server starts in the background (it must not race a steered test)."""
    deadline = time.monotonic() + seconds
    while higgs_auto_router._warming and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not higgs_auto_router._warming


def _fakes():
    return {name: FakeProvider(models=[], reply=f"answer from {name}")
            for name in ("coder", "chatter", "mathy", "fallback")}


@pytest.fixture(scope="module")
def env(tiny_router_model):
    fakes = _fakes()
    records = Records()
    app = auto_app(tiny_router_model, fakes, records=records)
    with serve_in_thread(app, timeout=120) as url:
        router = next(r for r in app[keys.ROUTERS] if r.name == "auto")
        wait_warm()
        assert router.warmed  # the server warmed the classifier up in the background
        yield {"url": url, "app": app, "fakes": fakes, "records": records, "router": router,
               "engine": app[keys.PROVIDERS]["higgs"].engine}


@pytest.fixture
def auto(env):
    """The auto-router with a clean cache and no steering; restored after the test."""
    router = env["router"]
    router.cache.clear()
    classifier = router.classifier()
    timeout = router.timeout
    yield router
    classifier.extra_processors.clear()
    router.timeout = timeout
    router.cache.clear()


def steer(env, answer: str) -> None:
    tokenizer = env["app"][keys.PROVIDERS]["higgs"].model("router").tokenizer
    env["router"].classifier().extra_processors[:] = [Steer(tokenizer, answer)]


@pytest.fixture
def oai(env):
    return openai.OpenAI(base_url=env["url"] + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def claude(env):
    return anthropic.Anthropic(base_url=env["url"], api_key="unused", max_retries=0)


def _ask(oai, text, model="auto", history=()):
    raw = oai.chat.completions.with_raw_response.create(
        model=model, messages=[*history, {"role": "user", "content": text}], max_tokens=8)
    return raw.headers, raw.parse()


def _words(rng: random.Random) -> str:
    return " ".join("".join(rng.choices(string.ascii_letters + string.digits + "{}();", k=rng.randint(1, 9)))
                    for _ in range(rng.randint(1, 40)))


async def test_the_answer_is_always_a_candidate_or_other_whatever_the_weights(tiny_router_model, tiny_raw_model):
    """Many random conversations, two random models (one may emit any token): every answer is valid."""
    candidates = [Candidate(c["name"], c["description"]) for c in CANDIDATES]
    valid = set(answers(candidates))
    rng = random.Random(3)
    seen: list[str] = []
    for model_dir in (tiny_router_model, tiny_raw_model):
        provider = make_provider(model_dir)
        await provider.start()
        try:
            classifier = MlxClassifier(provider, "router")
            for _ in range(10):
                history = [{"role": rng.choice(["user", "assistant"]), "content": _words(rng)}
                           for _ in range(rng.randint(1, 4))]
                verdict = await classifier.classify(candidates, history)
                assert verdict.answer in valid
                assert verdict.route == (None if verdict.answer == "other" else verdict.answer)
                seen.append(verdict.answer)
            # steering every answer in turn: each one is reachable and comes out exactly
            for answer in sorted(valid):
                classifier.extra_processors[:] = [Steer(provider.model("router").tokenizer, answer)]
                assert (await classifier.classify(candidates, [{"role": "user", "content": "hi"}])).answer == answer
            # lenient mode decodes freely: whatever comes out is read as a candidate or as no route
            lenient = MlxClassifier(provider, "router", mode="lenient")
            verdict = await lenient.classify(candidates, [{"role": "user", "content": _words(rng)}])
            assert verdict.route in {c.name for c in candidates} | {None} and verdict.output_tokens >= 1
            assert wait_idle(provider.engine)
        finally:
            await provider.close()
    assert len(seen) == 20



async def test_decoding_stops_once_the_tokens_so_far_start_exactly_one_answer(tiny_router_model):
    """Two names sharing a long prefix: the answer is known (and returned whole) once the decoded text
    leaves one candidate, before the rest of its tokens are generated."""
    candidates = [Candidate("code_generation", "Writing new code"), Candidate("code_review", "Reviewing code"),
                  Candidate("chat", "Small talk")]
    provider = make_provider(tiny_router_model)
    await provider.start()
    try:
        classifier = MlxClassifier(provider, "router")
        tokenizer = provider.model("router").tokenizer
        for answer in ("code_generation", "code_review", "chat", "other"):
            classifier.extra_processors[:] = [Steer(tokenizer, answer)]
            verdict = await classifier.classify(candidates, [{"role": "user", "content": "hi"}])
            assert verdict.answer == answer and verdict.route == (None if answer == "other" else answer)
            full = len(tokenizer.encode(answer, add_special_tokens=False))
            # the tokens that tell the answer apart, never the whole spelling of a long shared-prefix name
            assert 1 <= verdict.output_tokens <= full
            if answer.startswith("code_"):
                assert verdict.output_tokens < full
        assert wait_idle(provider.engine)
    finally:
        await provider.close()

def test_auto_requests_through_http_always_land_on_a_valid_rule(env, auto, oai):
    rng = random.Random(5)
    for _ in range(6):
        try:
            headers, reply = _ask(oai, _words(rng))
        except openai.BadRequestError as err:  # the 'code' route has no model to send in place of 'auto'
            assert "chose route 'code'" in err.message
            continue
        assert headers["x-higgs-route"] in VALID_RULES - {"auto:code"}
        assert reply.choices[0].message.content == f"answer from {headers['x-higgs-provider']}"


def test_auto_model_goes_to_the_chosen_route_with_its_model(env, auto, oai, claude):
    steer(env, "chat")
    headers, reply = _ask(oai, "how are you today?")
    assert reply.choices[0].message.content == "answer from chatter"
    assert headers["x-higgs-route"] == "auto:chat" and headers["x-higgs-provider"] == "chatter"
    assert env["fakes"]["chatter"].calls[-1][1].model == "chat-model"
    record = env["records"].records[-1]
    assert (record.route, record.routing_method, record.provider) == ("auto:chat", "auto", "chatter")

    with oai.chat.completions.with_streaming_response.create(
            model="auto", stream=True, max_tokens=8, messages=[{"role": "user", "content": "and you?"}]) as stream:
        assert stream.headers["x-higgs-route"] == "auto:chat"
        text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    assert text == "answer from chatter"

    steer(env, "math")
    raw = claude.messages.with_raw_response.create(model="auto", max_tokens=8,
                                                   messages=[{"role": "user", "content": "what is 2+2?"}])
    assert raw.headers["x-higgs-route"] == "auto:math" and raw.parse().content[0].text == "answer from mathy"
    assert env["fakes"]["mathy"].calls[-1][1].model == "math-model"


def test_auto_model_on_a_route_without_model_is_a_clear_400(env, auto, oai, claude):
    steer(env, "code")
    with pytest.raises(openai.BadRequestError) as err:
        _ask(oai, "fix this stack trace")
    assert "chose route 'code' ([[routes]] #1), which has no 'model' to send in place of 'auto'" in err.value.message
    with pytest.raises(anthropic.BadRequestError) as err2:
        claude.messages.create(model="auto", max_tokens=8, messages=[{"role": "user", "content": "refactor it"}])
    assert "chose route 'code'" in err2.value.body["error"]["message"]


def test_other_falls_through_to_the_normal_order(env, auto, oai):
    steer(env, "other")
    headers, _ = _ask(oai, "tell me about the weather")
    assert headers["x-higgs-route"] == "pattern:fallback" and headers["x-higgs-provider"] == "fallback"
    assert env["records"].records[-1].routing_method == "pattern"


def test_timeout_falls_back_and_stops_the_generation(env, auto, oai):
    gate = Gate()
    auto.classifier().extra_processors[:] = [gate]
    auto.timeout = 2.0  # the default timeout_ms
    started = time.perf_counter()
    try:
        headers, reply = _ask(oai, "a question the classifier is too slow for")
        elapsed = time.perf_counter() - started
        assert gate.entered.is_set()  # the classification was generating when the timeout hit
        assert env["engine"].state()["active_requests"] == 1  # ... and is still held on the engine thread
    finally:
        gate.release.set()
    assert headers["x-higgs-route"] == "pattern:fallback" and reply.choices[0].message.content == "answer from fallback"
    assert 2.0 <= elapsed < 6.0
    assert wait_idle(env["engine"])  # the cancelled job is dropped at the engine's next step
    calls = gate.calls
    time.sleep(0.3)
    assert gate.calls == calls == 1  # nothing runs the cancelled job any more
    assert len(auto.cache) == 0  # a timeout is not remembered


def test_decisions_are_cached_by_conversation_prefix(env, auto, oai, monkeypatch):
    classifier = auto.classifier()
    calls = []
    original = classifier.classify

    async def counting(candidates, items):
        calls.append(items)
        return await original(candidates, items)

    monkeypatch.setattr(classifier, "classify", counting)
    steer(env, "chat")
    first, _ = _ask(oai, "hello there, long time no see")
    assert first["x-higgs-route"] == "auto:chat" and len(calls) == 1
    steer(env, "math")  # the classifier would now say math, but the conversation is remembered
    again, _ = _ask(oai, "hello there, long time no see")
    history = [{"role": "user", "content": "hello there, long time no see"},
               {"role": "assistant", "content": "answer from chatter"}]
    follow_up, _ = _ask(oai, "and now a follow-up", history=history)
    assert again["x-higgs-route"] == follow_up["x-higgs-route"] == "auto:chat" and len(calls) == 1
    fresh, _ = _ask(oai, "a different conversation")
    assert fresh["x-higgs-route"] == "auto:math" and len(calls) == 2
    assert auto.cache.hits >= 2


def test_auto_needs_a_chat_request(env, auto, oai):
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model="auto", prompt="hello", max_tokens=4)
    assert "completion requests need a concrete model name" in err.value.message


def test_force_classifies_every_request_first(tiny_router_model):
    fakes = _fakes()
    app = auto_app(tiny_router_model, fakes, force=True)
    with serve_in_thread(app, timeout=120) as url:
        router = next(r for r in app[keys.ROUTERS] if r.name == "auto")
        wait_warm()
        tokenizer = app[keys.PROVIDERS]["higgs"].model("router").tokenizer
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        router.classifier().extra_processors[:] = [Steer(tokenizer, "code")]
        headers, _ = _ask(client, "write a quicksort", model="router")
        # the 'code' route has no model: the client's model name is forwarded
        assert headers["x-higgs-route"] == "auto:code" and fakes["coder"].calls[-1][1].model == "router"
        router.classifier().extra_processors[:] = [Steer(tokenizer, "other")]
        headers, _ = _ask(client, "something else entirely", model="router")
        assert headers["x-higgs-route"] == "local" and headers["x-higgs-provider"] == "higgs"
        router.classifier().extra_processors[:] = [Steer(tokenizer, "chat")]
        headers, _ = _ask(client, "nice weather", model="gpt-whatever")
        assert headers["x-higgs-route"] == "auto:chat" and fakes["chatter"].calls[-1][1].model == "chat-model"
        embeddings = client.with_options(max_retries=0)
        with pytest.raises(openai.APIStatusError):  # non-chat requests skip classification: normal order
            embeddings.embeddings.create(model="nothing-serves-this", input="x")
