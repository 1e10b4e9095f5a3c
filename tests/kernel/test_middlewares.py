"""Middlewares through real HTTP: auth, rate limit, timeout, body limit, CORS, request ids, and every error
rendered in the caller's format (OpenAI JSON on OpenAI paths, Anthropic JSON on Anthropic paths)."""

from __future__ import annotations

import asyncio
import json

import anthropic
import openai
import pytest

from higgs.server.middlewares import TokenBucket
from higgs.testing import FakeProvider, app_client, build_app, serve_app

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "tiny", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def app_with(server=None, **provider_kwargs):
    provider = FakeProvider(local=True, models=["tiny"], **provider_kwargs)
    return build_app({"server": server or {}}, providers={"higgs": provider}), provider


def is_openai_error(body, kind):
    return set(body) == {"error"} and body["error"]["type"].startswith(kind) and body["error"]["message"]


def is_anthropic_error(body, kind):
    return body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"]


# -- errors in the caller's format ------------------------------------------------------------------


async def test_404_and_405_in_both_formats():
    app, _ = app_with()
    async with app_client(app) as client:
        resp = await client.get("/v1/nothing-here")
        assert resp.status == 404 and is_openai_error(await resp.json(), "not_found")
        resp = await client.get("/v1/messages/whatever")
        assert resp.status == 404 and is_anthropic_error(await resp.json(), "not_found_error")
        resp = await client.get("/v1/chat/completions")
        body = await resp.json()
        assert resp.status == 405 and "POST" in resp.headers["Allow"] and "POST" in body["error"]["message"]
        resp = await client.get("/v1/messages")
        assert resp.status == 405 and is_anthropic_error(await resp.json(), "invalid_request_error")


async def test_malformed_json_is_400_naming_the_problem():
    app, _ = app_with()
    async with app_client(app) as client:
        resp = await client.post("/v1/chat/completions", data=b'{"model": "tiny", ', headers={
            "content-type": "application/json"})
        body = await resp.json()
        assert resp.status == 400 and "not valid JSON" in body["error"]["message"]
        assert "line 1 column" in body["error"]["message"]
        resp = await client.post("/v1/messages", data=b"[1, 2]")
        body = await resp.json()
        assert resp.status == 400 and is_anthropic_error(body, "invalid_request_error")
        assert "must be a JSON object" in body["error"]["message"]
        resp = await client.post("/v1/messages", data=b"")
        assert resp.status == 400 and "empty" in (await resp.json())["error"]["message"]


async def test_internal_errors_are_500_with_a_body():
    app, _ = app_with(fail=RuntimeError("secret internals"))
    async with app_client(app) as client:
        resp = await client.post("/v1/messages", json=MESSAGES)
        body = await resp.json()
        assert resp.status == 500 and is_anthropic_error(body, "api_error")
        assert "secret internals" not in body["error"]["message"]


async def test_request_id_is_echoed_or_generated():
    app, _ = app_with()
    async with app_client(app) as client:
        resp = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "abc-123"})
        assert resp.headers["x-request-id"] == "abc-123"
        resp = await client.get("/nope")
        assert resp.headers["x-request-id"].startswith("req_")


# -- auth -------------------------------------------------------------------------------------------


async def test_auth_accepts_bearer_and_x_api_key_with_official_sdks():
    app, _ = app_with({"api_key": "s3cret"})
    async with serve_app(app) as url:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0) as oai:
            reply = await oai.chat.completions.create(**CHAT)
        assert reply.choices[0].message.content == "Hello from the fake provider."
        async with anthropic.AsyncAnthropic(base_url=url, api_key="s3cret", max_retries=0) as ant:
            message = await ant.messages.create(**MESSAGES)  # the Anthropic SDK sends only x-api-key
        assert message.content[0].text == "Hello from the fake provider."
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as err:
                await bad.models.list()
        assert err.value.status_code == 401 and "wrong" not in str(err.value)
        async with anthropic.AsyncAnthropic(base_url=url, api_key="nope", max_retries=0) as bad_ant:
            with pytest.raises(anthropic.AuthenticationError) as aerr:
                await bad_ant.messages.create(**MESSAGES)
        assert aerr.value.body["error"]["type"] == "authentication_error"


async def test_auth_missing_key_and_open_health():
    app, _ = app_with({"api_key": "s3cret"})
    async with app_client(app) as client:
        resp = await client.post("/v1/chat/completions", json=CHAT)
        body = await resp.json()
        assert resp.status == 401 and "Missing API key" in body["error"]["message"]
        assert "s3cret" not in await resp.text()
        assert (await client.get("/health")).status == 200
        resp = await client.get("/v1/system")
        assert resp.status == 401
        resp = await client.get("/v1/system", headers={"Authorization": "Bearer s3cret"})
        assert resp.status == 200


# -- rate limit -------------------------------------------------------------------------------------


async def test_rate_limit_429_with_retry_after_and_failed_auth_uses_no_quota():
    app, _ = app_with({"api_key": "k", "rate_limit": 2})
    async with app_client(app) as client:
        for _ in range(5):  # failed auth: no quota spent
            assert (await client.post("/v1/chat/completions", json=CHAT)).status == 401
        ok = {"Authorization": "Bearer k"}
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=ok)).status == 200
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=ok)).status == 200
        resp = await client.post("/v1/messages", json=MESSAGES, headers={"x-api-key": "k"})
        body = await resp.json()
        assert resp.status == 429 and is_anthropic_error(body, "rate_limit_error")
        assert 1 <= int(resp.headers["retry-after"]) <= 30
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=ok)
        assert resp.status == 429 and is_openai_error(await resp.json(), "rate_limit")


def test_token_bucket_refills_over_time():
    now = [0.0]
    bucket = TokenBucket(60, clock=lambda: now[0])  # one token per second, burst 60
    assert all(bucket.take("a") is None for _ in range(60))
    wait = bucket.take("a")
    assert wait == pytest.approx(1.0)
    assert bucket.take("b") is None  # per client
    now[0] = 1.0
    assert bucket.take("a") is None and bucket.take("a") is not None


# -- timeout ----------------------------------------------------------------------------------------


async def test_timeout_is_504_and_cancels_the_work():
    app, provider = app_with({"timeout": 0.2}, delay=5)
    async with app_client(app) as client:
        resp = await client.post("/v1/chat/completions", json=CHAT)
        body = await resp.json()
        assert resp.status == 504 and is_openai_error(body, "timeout")
        assert provider.cancelled == 1
        resp = await client.post("/v1/messages", json=MESSAGES)
        assert resp.status == 504 and is_anthropic_error(await resp.json(), "timeout_error")


async def test_stream_stall_ends_with_an_error_event():
    app, provider = app_with({"timeout": 0.3}, chunk_delay=2)
    async with app_client(app) as client:
        resp = await client.post("/v1/messages", json={**MESSAGES, "stream": True})
        assert resp.status == 200
        text = await resp.text()
        assert "event: error" in text and "timeout" in text
        assert provider.cancelled == 1


# -- body limit -------------------------------------------------------------------------------------


async def test_body_limit_413_in_both_formats():
    app, provider = app_with({"max_body_size": 1024})
    async with app_client(app) as client:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
        resp = await client.post("/v1/chat/completions", json=big)
        body = await resp.json()
        assert resp.status == 413 and "limit is 1024 bytes" in body["error"]["message"]
        resp = await client.post("/v1/messages", json={**MESSAGES, "system": "y" * 4096})
        assert resp.status == 413 and is_anthropic_error(await resp.json(), "request_too_large")

        async def chunked():  # no content-length: enforced while reading
            for _ in range(8):
                yield b" " * 512
        resp = await client.post("/v1/chat/completions", data=chunked())
        assert resp.status == 413
        assert provider.calls == []


# -- CORS -------------------------------------------------------------------------------------------


async def test_cors_preflight_and_headers_even_with_auth():
    app, _ = app_with({"api_key": "k", "cors_origins": ["http://app.example"]})
    async with app_client(app) as client:
        resp = await client.options("/v1/chat/completions", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert resp.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        resp = await client.post("/v1/chat/completions", json=CHAT, headers={
            "Origin": "http://app.example", "Authorization": "Bearer k"})
        assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert "x-request-id" in resp.headers["Access-Control-Expose-Headers"]
        resp = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": "http://app.example"})
        assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
        resp = await client.options("/v1/chat/completions", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers


async def test_cors_wildcard_on_streams():
    app, _ = app_with({"cors_origins": ["*"]})
    async with app_client(app) as client:
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True},
                                 headers={"Origin": "http://x"})
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        await resp.read()


async def test_default_origins_are_loopback_pages_and_foreign_pages_are_refused():
    """Regression: the default ``["*"]`` let any web page the user visited use the local server (and the
    upstream keys behind it): read answers through CORS, or fire "simple" text/plain POSTs with no preflight."""
    app, fake = app_with()
    async with app_client(app) as client:
        for origin in ("http://localhost:5173", "http://127.0.0.1:3000", "http://[::1]:8080", "http://localhost"):
            resp = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": origin})
            assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == origin
        calls = len(fake.calls)
        for origin in ("https://evil.example", "http://localhost.evil.example", "http://localhost:1x", "null"):
            resp = await client.post("/v1/chat/completions", data=json.dumps(CHAT),
                                     headers={"Origin": origin, "content-type": "text/plain"})
            body = await resp.json()
            assert resp.status == 403 and body["error"]["type"] == "permission_error", body
            assert "server.cors_origins" in body["error"]["message"]
            assert "Access-Control-Allow-Origin" not in resp.headers
        resp = await client.post("/v1/messages", json={"model": "m", "max_tokens": 5, "messages": []},
                                 headers={"Origin": "https://evil.example"})
        assert resp.status == 403 and (await resp.json())["error"]["type"] == "permission_error"
        assert len(fake.calls) == calls  # refused before any provider ran
        resp = await client.post("/v1/chat/completions", json=CHAT)  # SDKs and curl send no Origin
        assert resp.status == 200


async def test_concurrent_clients_do_not_share_a_request_id():
    app, _ = app_with()
    async with app_client(app) as client:
        responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=CHAT) for _ in range(5)))
        assert len({r.headers["x-request-id"] for r in responses}) == 5
