"""OpenAIProvider (RemoteProvider over the OpenAI format) against a fake upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from higgs.errors import ApiError, ConfigError, ProviderError
from higgs.interfaces import CallContext, RawRequest, RouteDecision
from higgs.messages import ChatRequest, Message, StreamError, StreamFinish, StreamStart, TextBlock, accumulate
from higgs.remote.fake import Behaviour


def call(client_format: str = "anthropic", providers: tuple[str, ...] = ("oa",), model: str = "gpt-up",
         headers: dict[str, str] | None = None) -> CallContext:
    """A call as the gateway makes it: ``client_format`` != ``openai`` means translation."""
    return CallContext(request_id="req-1", client_format=client_format, headers=headers or {},
                       route=RouteDecision(providers, model, "pattern:test", "pattern"))


def chat_request(text: str = "hi", model: str = "alias") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content=[TextBlock(text=text)])])


def raw_request(body: dict, headers: list[tuple[str, str]] | None = None) -> RawRequest:
    return RawRequest("POST", "/v1/chat/completions", "", headers or [("content-type", "application/json")],
                      json.dumps(body).encode())


async def read_all(response) -> bytes:
    return b"".join([chunk async for chunk in response.body])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_translated_chat_rewrites_model_and_injects_key(fake, make_provider):
    provider = make_provider(api_key="sk-upstream")
    response = await provider.chat(chat_request(), call(headers={"authorization": "Bearer client-key"}))
    assert response.content[0].text == "Hello from the fake upstream!"
    assert response.usage.input_tokens == 12
    sent = fake.requests[-1]
    assert sent.path == "/v1/chat/completions"  # base ".../v1/" joined without doubling
    assert sent.json()["model"] == "gpt-up"
    assert sent.header("authorization") == "Bearer sk-upstream"


async def test_translated_stream_is_incremental_canonical_events(fake, make_provider):
    provider = make_provider()
    events = [e async for e in provider.chat_stream(chat_request(), call())]
    assert isinstance(events[0], StreamStart) and isinstance(events[-1], StreamFinish)
    assert accumulate(events).content[0].text == "Hello from the fake upstream!"
    assert fake.requests[-1].json()["stream"] is True
    assert provider.in_flight == 0 and provider.state()["requests"] == 1


async def test_passthrough_is_byte_identical(fake, make_provider):
    provider = make_provider()
    body = {"model": "gpt-up", "messages": [{"role": "user", "content": "hi"}], "custom_field": [1, 2]}
    response = await provider.passthrough(raw_request(body), call("openai"))
    assert response.status == 200
    received = await read_all(response)
    assert received == fake.sent[-1]
    assert fake.requests[-1].body == json.dumps(body).encode()


async def test_passthrough_stream_is_byte_identical(fake, make_provider):
    provider = make_provider()
    body = {"model": "gpt-up", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    response = await provider.passthrough(raw_request(body), call("openai"))
    assert ("content-type", "text/event-stream") in [(k.lower(), v) for k, v in response.headers]
    received = await read_all(response)
    assert received == fake.sent[-1] and received.endswith(b"data: [DONE]\n\n")
    assert provider.in_flight == 0


async def test_passthrough_headers_hop_by_hop_dropped_repeated_kept(fake, make_provider):
    headers = [("content-type", "application/json"), ("connection", "keep-alive, x-drop-me"), ("x-drop-me", "1"),
               ("accept-encoding", "gzip"), ("keep-alive", "timeout=5"), ("te", "trailers"),
               ("x-tag", "a"), ("x-tag", "b"), ("openai-organization", "org-1")]
    await read_all(await make_provider().passthrough(raw_request({"model": "m"}, headers), call("openai")))
    sent = fake.requests[-1]
    names = [k.lower() for k, _ in sent.headers]
    assert "x-drop-me" not in names and "keep-alive" not in names and "te" not in names
    assert sent.header("accept-encoding") is None
    assert [v for k, v in sent.headers if k.lower() == "x-tag"] == ["a", "b"]
    assert sent.header("openai-organization") == "org-1"


async def test_client_key_forwarded_but_gateway_key_never(fake, make_provider):
    provider = make_provider(gateway_key="higgs-secret")
    await provider.chat(chat_request(), call(headers={"x-api-key": "client-key"}))
    assert fake.requests[-1].header("authorization") == "Bearer client-key"
    await provider.chat(chat_request(), call(headers={"authorization": "Bearer higgs-secret"}))
    assert fake.requests[-1].header("authorization") is None
    await read_all(await provider.passthrough(
        raw_request({"model": "m"}, [("authorization", "Bearer higgs-secret")]), call("openai")))
    assert fake.requests[-1].header("authorization") is None


async def test_strip_auth_drops_client_credentials(fake, make_provider):
    provider = make_provider(strip_auth=True)
    await read_all(await provider.passthrough(
        raw_request({"model": "m"}, [("authorization", "Bearer client"), ("x-api-key", "client")]), call("openai")))
    assert fake.requests[-1].header("authorization") is None and fake.requests[-1].header("x-api-key") is None


async def test_retry_after_is_honoured_when_no_fallback_is_left(fake, make_provider):
    fake.script.append(Behaviour(status=429, headers={"retry-after": "0.2"}))
    started = asyncio.get_running_loop().time()
    response = await make_provider().chat(chat_request(), call())
    assert response.content[0].text and len(fake.requests) == 2
    assert asyncio.get_running_loop().time() - started >= 0.2


async def test_retry_after_too_long_is_reported_with_its_value(fake, make_provider):
    fake.script.append(Behaviour(status=429, headers={"retry-after": "120"}))
    with pytest.raises(ProviderError) as info:
        await make_provider().chat(chat_request(), call())
    assert info.value.status == 429 and info.value.info.retry_after == 120 and info.value.retryable
    assert len(fake.requests) == 1


async def test_with_a_fallback_left_errors_fail_over_at_once(fake, make_provider):
    fake.script.append(Behaviour(status=503))
    with pytest.raises(ProviderError) as info:
        await make_provider().passthrough(raw_request({"model": "m"}), call("openai", providers=("oa", "backup")))
    assert info.value.retryable and info.value.status == 503 and len(fake.requests) == 1


async def test_passthrough_errors_come_back_untouched_at_the_last_provider(fake, make_provider):
    fake.script.append(Behaviour(status=400, body={"error": {"message": "bad", "type": "invalid_request_error"}}))
    response = await make_provider().passthrough(raw_request({"model": "m"}), call("openai"))
    assert response.status == 400 and await read_all(response) == fake.sent[-1]


async def test_translated_upstream_errors_keep_status_and_redact_keys(fake, make_provider):
    fake.script.append(Behaviour(status=401, body={"error": {"message": "Incorrect API key provided: sk-upstream"}}))
    with pytest.raises(ProviderError) as info:
        await make_provider(api_key="sk-upstream").chat(chat_request(), call())
    assert info.value.status == 401 and not info.value.retryable
    assert "sk-upstream" not in str(info.value) and "***" in str(info.value)


async def test_connection_refused_is_502(make_provider):
    provider = make_provider(url=f"http://127.0.0.1:{free_port()}", max_retries=0)
    with pytest.raises(ProviderError) as info:
        await provider.chat(chat_request(), call())
    assert info.value.status == 502 and info.value.retryable and info.value.info.kind == "upstream_unreachable"


async def test_upstream_timeout_is_504(fake, make_provider):
    fake.script.append(Behaviour(delay=0.6))
    with pytest.raises(ProviderError) as info:
        await make_provider(timeout=0.2, max_retries=0).chat(chat_request(), call())
    assert info.value.status == 504 and info.value.retryable


async def test_upstream_dying_mid_stream_ends_with_error_event(fake, make_provider):
    fake.script.append(Behaviour(die_after=3))
    events = [e async for e in make_provider().chat_stream(chat_request(), call())]
    assert isinstance(events[0], StreamStart)
    assert isinstance(events[-1], StreamError) and events[-1].error.status == 502


async def test_passthrough_stream_dying_mid_way_gets_an_sse_error_event(fake, make_provider):
    fake.script.append(Behaviour(die_after=3))
    body = {"model": "m", "stream": True, "messages": []}
    received = await read_all(await make_provider().passthrough(raw_request(body), call("openai")))
    last = received.rstrip(b"\n").split(b"\n\n")[-1]
    assert last.startswith(b"data: ") and json.loads(last[6:])["error"]["type"]


async def test_client_disconnect_cancels_the_upstream_request(fake, make_provider):
    fake.script.append(Behaviour(chunk_delay=0.05, text=" ".join(["word"] * 60)))
    provider = make_provider()
    stream = provider.chat_stream(chat_request(), call())
    await anext(stream)
    await stream.aclose()  # what a CancelledError in the gateway's handler does to the generator
    for _ in range(40):
        if fake.aborted:
            break
        await asyncio.sleep(0.05)
    assert fake.aborted == 1 and fake.events_sent < 60
    assert provider.in_flight == 0


async def test_passthrough_close_cancels_the_upstream_stream(fake, make_provider):
    fake.script.append(Behaviour(chunk_delay=0.05, text=" ".join(["word"] * 60)))
    response = await make_provider().passthrough(raw_request({"model": "m", "stream": True}), call("openai"))
    await anext(response.body)
    await response.body.aclose()
    assert response.close is not None
    await response.close()
    for _ in range(40):
        if fake.aborted:
            break
        await asyncio.sleep(0.05)
    assert fake.aborted == 1


async def test_list_models_from_upstream_and_from_config(fake, make_provider):
    models = await make_provider(api_key="sk-x").list_models()
    assert [m.id for m in models] == ["gpt-fake", "claude-fake"] and models[0].owned_by == "oa"
    assert fake.requests[-1].header("authorization") == "Bearer sk-x"
    assert [m.id for m in await make_provider(models=["only-this"]).list_models()] == ["only-this"]


async def test_count_tokens_stub_estimates_locally(fake, make_provider):
    count = await make_provider(stub_count_tokens=True).count_tokens(chat_request("hello there, world"), call())
    assert 5 <= count <= 20 and not fake.requests
    with pytest.raises(ApiError) as info:
        await make_provider().count_tokens(chat_request(), call())
    assert "stub_count_tokens" in str(info.value)


def test_configuration_errors(make_provider):
    with pytest.raises(ConfigError, match="means the local engine"):
        make_provider(name="higgs")
    with pytest.raises(ConfigError, match="not a registered wire format"):
        make_provider(format="nope")
    with pytest.raises(ConfigError, match="url"):
        make_provider(url="localhost:8080")


async def test_text_completions_and_embeddings_translate(fake, make_provider):
    from higgs.messages import CompletionRequest, EmbeddingRequest

    provider = make_provider()
    done = await provider.complete(CompletionRequest(model="alias", prompt=["Once"]), call("ollama"))
    assert done.choices[0].text == "Hello from the fake upstream!" and fake.requests[-1].json()["model"] == "gpt-up"
    events = [e async for e in provider.complete_stream(CompletionRequest(model="a", prompt=["x"]), call("ollama"))]
    assert isinstance(events[-1], StreamFinish)
    assert "".join(e.delta.text for e in events if e.type == "block_delta") == "Hello from the fake upstream!"
    vectors = await provider.embed(EmbeddingRequest(model="alias", input=["ab", "abcd"]), call("ollama"))
    assert vectors.data == [[2.0, 0.5, -0.25], [4.0, 0.5, -0.25]] and fake.requests[-1].path == "/v1/embeddings"


async def test_garbage_body_is_a_retryable_502(fake, make_provider):
    fake.script.append(Behaviour(raw=b"[1, 2, 3]"))
    with pytest.raises(ProviderError) as info:
        await make_provider().chat(chat_request(), call())
    assert info.value.status == 502 and info.value.retryable


async def test_passthrough_stream_closed_unread_releases_everything(fake, make_provider):
    provider = make_provider()
    response = await provider.passthrough(raw_request({"model": "m", "stream": True}), call("openai"))
    assert provider.in_flight == 1
    assert response.close is not None
    await response.close()
    await response.close()  # idempotent
    assert provider.in_flight == 0


async def test_an_upstream_that_compresses_anyway_is_relayed_decoded(make_provider):
    import gzip

    from aiohttp import web

    payload = json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()

    async def handler(request):
        return web.Response(body=gzip.compress(payload), headers={"content-encoding": "gzip",
                                                                  "content-type": "application/json"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        provider = make_provider(url=f"http://127.0.0.1:{runner.addresses[0][1]}")
        response = await provider.passthrough(raw_request({"model": "m"}), call("openai"))
        assert await read_all(response) == payload
        assert "content-encoding" not in [k.lower() for k, _ in response.headers]
    finally:
        await runner.cleanup()
