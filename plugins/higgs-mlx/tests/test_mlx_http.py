"""End to end through the gateway with the official SDKs: the tiny model matches mlx-lm's own generation."""

from __future__ import annotations

import anthropic
import openai
import pytest
from higgs.testing import serve_in_thread
from mlx_support import mlx_app, mlx_lm_greedy

from higgs_mlx import prompt as prompts

QUESTION = "hello there"


@pytest.fixture(scope="module")
def served(tiny_llama, tiny_llama_no_template):
    app = mlx_app({"models": [{"path": str(tiny_llama), "name": "tiny"},
                              {"path": str(tiny_llama_no_template), "name": "plain"}]})
    with serve_in_thread(app, timeout=120) as url:
        yield url, app


@pytest.fixture(scope="module")
def server(served):
    return served[0]


@pytest.fixture(scope="module")
def reference(tiny_llama):
    """mlx-lm's greedy text for QUESTION rendered with the tiny model's template, and the token counts."""
    from higgs.messages import ChatRequest, Message, TextBlock
    from mlx_support import ARCHES

    from higgs_mlx.loader import load_model_dir

    lm = load_model_dir(tiny_llama, ARCHES, name="tiny")
    ids = prompts.encode_chat(ChatRequest(model="tiny", messages=[
        Message(role="user", content=[TextBlock(text=QUESTION)])]), lm)
    tokens, text = mlx_lm_greedy(tiny_llama, ids, 20)
    return {"text": text, "prompt_tokens": len(ids), "completion_tokens": len(tokens),
            "eos": tokens[-1] in lm.eos_ids}


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def claude(server):
    return anthropic.Anthropic(base_url=server, api_key="unused", max_retries=0)


def test_openai_chat_matches_mlx_lm(oai, reference):
    reply = oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                        max_tokens=20, temperature=0)
    assert reply.choices[0].message.content == reference["text"]
    assert reply.usage.prompt_tokens == reference["prompt_tokens"]
    assert reply.usage.completion_tokens == reference["completion_tokens"]
    assert reply.choices[0].finish_reason == ("stop" if reference["eos"] else "length")

    stream = oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                         max_tokens=20, temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference["text"]
    assert chunks[-1].usage.completion_tokens == reference["completion_tokens"]


def test_anthropic_messages_match_mlx_lm(claude, reference):
    message = claude.messages.create(model="tiny", max_tokens=20, extra_body={"temperature": 0},
                                     messages=[{"role": "user", "content": QUESTION}])
    assert message.content[0].text == reference["text"]
    # Anthropic counts prefix-cache reads apart from input_tokens (the OpenAI test above ran the same prompt).
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens == reference["prompt_tokens"]
    assert message.usage.output_tokens == reference["completion_tokens"]
    assert message.stop_reason == ("end_turn" if reference["eos"] else "max_tokens")

    with claude.messages.stream(model="tiny", max_tokens=20, extra_body={"temperature": 0},
                                messages=[{"role": "user", "content": QUESTION}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == reference["text"]
    assert final.usage.output_tokens == reference["completion_tokens"]


def test_anthropic_stop_sequence(claude, reference):
    stop = reference["text"][5:8]
    message = claude.messages.create(model="tiny", max_tokens=20, extra_body={"temperature": 0}, stop_sequences=[stop],
                                     messages=[{"role": "user", "content": QUESTION}])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert message.content[0].text == reference["text"][: reference["text"].index(stop)]


def test_count_tokens_is_exact(claude, reference):
    count = claude.messages.count_tokens(model="tiny", messages=[{"role": "user", "content": QUESTION}])
    assert count.input_tokens == reference["prompt_tokens"]


def test_completions_on_a_model_without_chat_template(oai):
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        oai.chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])
    reply = oai.completions.create(model="plain", prompt="Once upon a time", max_tokens=6, temperature=0)
    assert reply.choices[0].text and reply.usage.completion_tokens == 6


def test_context_overflow_is_a_400_in_both_formats(oai, claude):
    long = "zap " * 2100
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": long}], max_tokens=4)
    assert "context" in str(err.value)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="tiny", max_tokens=4, messages=[{"role": "user", "content": long}])


def test_models_are_listed(oai):
    ids = {m.id for m in oai.models.list()}
    assert {"tiny", "plain"} <= ids


def test_client_disconnect_frees_the_engine(served):
    """A streaming client that hangs up mid-answer: the gateway cancels, the engine drops the job."""
    import http.client
    import json
    import time

    from higgs.server.keys import PROVIDERS

    url, app = served
    local = app[PROVIDERS]["higgs"]
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = {"model": "tiny", "stream": True, "max_tokens": 4000, "temperature": 1.0, "seed": 5,
            "messages": [{"role": "user", "content": "talk for a long time"}]}
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"content-type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    response.fp.readline()  # the first SSE line: generation is under way
    assert local.state()["active_requests"] == 1
    completed = local.state()["completed_requests"]
    conn.sock.close()  # hang up without reading the rest
    conn.close()
    deadline = time.monotonic() + 10
    while local.state()["active_requests"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert local.state()["active_requests"] == 0
    assert local.state()["completed_requests"] == completed  # dropped, not run to the end


def test_lone_surrogates_in_text_are_replaced_not_a_500(server):
    """Regression: JSON's ``\\ud800`` (legal JSON, not UTF-8) reached the tokenizer and answered 500."""
    import httpx

    bodies = {"/v1/chat/completions": b'{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", '
                                      b'"content": "hi \\ud800 there"}]}',
              "/v1/messages": b'{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", '
                              b'"content": "hi \\udfff"}]}',
              "/v1/completions": b'{"model": "plain", "max_tokens": 2, "prompt": "x \\ud800"}',
              "/v1/embeddings": b'{"model": "tiny", "input": "x \\ud800"}'}
    for path, body in bodies.items():
        reply = httpx.post(server + path, content=body, headers={"content-type": "application/json"}, timeout=60)
        assert reply.status_code == 200, (path, reply.text)
    assert prompts.valid_unicode("a\ud800b\udfff") == "a\ufffdb\ufffd" and prompts.valid_unicode("é😀") == "é😀"


def test_openai_chat_logprobs_reach_the_client(oai):
    """Regression: the engine computed logprobs but the OpenAI response always said ``"logprobs": null``."""
    reply = oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                        max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert "".join(t.token for t in content).strip() == reply.choices[0].message.content.strip()
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == max(t.logprob for t in entry.top_logprobs)  # greedy picks the top token
    plain = oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                        max_tokens=5, temperature=0)
    assert plain.choices[0].logprobs is None


def test_empty_messages_are_a_clean_400_in_both_formats(oai, claude):
    """Regression: ``messages: []`` answered with the chat template's own error text."""
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model="tiny", max_tokens=4, system="be brief", messages=[])
    assert err.value.body["error"] == {"type": "invalid_request_error",
                                       "message": "messages: at least one message is required"}
    with pytest.raises(anthropic.BadRequestError, match="at least one message"):
        claude.messages.count_tokens(model="tiny", messages=[])
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model="tiny", messages=[])
    assert bad.value.body["param"] == "messages" and "template" not in bad.value.body["message"]
