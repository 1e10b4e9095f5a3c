"""The other OpenAI endpoints and Anthropic token counting, end to end with the official SDKs.

A ``FakeProvider`` serves as the local provider, so these exercise the formats' client side through the
real gateway: legacy completions (plain and streamed), embeddings (the SDK's default base64 and float,
``dimensions``), and Anthropic's count_tokens.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import anthropic
import openai
import pytest

from higgs.testing import FakeProvider, build_app, serve_app


@asynccontextmanager
async def local_higgs() -> AsyncIterator[tuple[str, FakeProvider]]:
    fake = FakeProvider(local=True, models=["tiny"], reply="one two three")
    async with serve_app(build_app(providers={"higgs": fake})) as url:
        yield url, fake


async def test_completions_plain_stream_and_token_prompts():
    async with local_higgs() as (url, fake), openai.AsyncOpenAI(base_url=url + "/v1", api_key="k",
                                                                max_retries=0) as client:
        done = await client.completions.create(model="tiny", prompt="Say three words", max_tokens=5)
        assert done.object == "text_completion" and done.choices[0].text == "one two three"
        assert done.choices[0].finish_reason == "stop" and done.usage.total_tokens > 0
        stream = await client.completions.create(model="tiny", prompt=["Say"], stream=True,
                                                 stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].text for c in chunks if c.choices) == "one two three"
        assert chunks[-1].usage is not None and chunks[-2].choices[0].finish_reason == "stop"
        await client.completions.create(model="tiny", prompt=[[1, 2, 3]])
        assert fake.calls[-1][1].prompt == [[1, 2, 3]]


async def test_embeddings_base64_float_and_dimensions():
    async with local_higgs() as (url, _), openai.AsyncOpenAI(base_url=url + "/v1", api_key="k",
                                                             max_retries=0) as client:
        default = await client.embeddings.create(model="tiny", input=["a", "b"])  # the SDK asks for base64
        floats = await client.embeddings.create(model="tiny", input=["a", "b"], encoding_format="float")
        for packed, plain in zip(default.data, floats.data, strict=True):
            assert packed.embedding == pytest.approx(plain.embedding, rel=1e-6)
        assert len(floats.data[0].embedding) == 8 and default.usage.prompt_tokens == 2
        short = await client.embeddings.create(model="tiny", input="a", dimensions=4, encoding_format="float")
        assert len(short.data[0].embedding) == 4
        assert math.isclose(sum(x * x for x in short.data[0].embedding), 1.0, rel_tol=1e-6)
        with pytest.raises(openai.BadRequestError) as err:
            await client.embeddings.create(model="tiny", input="a", encoding_format="hex")  # type: ignore[arg-type]
        assert err.value.body["param"] == "encoding_format"


async def test_anthropic_count_tokens_and_bad_json():
    async with local_higgs() as (url, _), anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0) as client:
        count = await client.messages.count_tokens(model="tiny", system="be brief",
                                                   messages=[{"role": "user", "content": "four words right here"}])
        assert count.input_tokens == 6
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/v1/messages", data=b'{"model": "tiny", "messages": [',
                                 headers={"content-type": "application/json"}) as response:
                body = await response.json()
    assert response.status == 400 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"


async def test_retrieve_one_model_with_both_sdks():
    """Regression: ``GET /v1/models/{id}`` (``client.models.retrieve``) was a 404 'no route' for every model."""
    fake = FakeProvider(local=True, models=["tiny", "org/repo-4bit"], reply="x")
    async with serve_app(build_app(providers={"higgs": fake})) as url:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as oa:
            model = await oa.models.retrieve("tiny")
            assert (model.id, model.object, model.owned_by) == ("tiny", "model", "higgs")
            assert (await oa.models.retrieve("org/repo-4bit")).id == "org/repo-4bit"  # ids with a slash
            with pytest.raises(openai.NotFoundError) as missing:
                await oa.models.retrieve("nope")
            assert missing.value.body["code"] == "model_not_found" and "tiny" in missing.value.body["message"]
        async with anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0) as an:
            info = await an.models.retrieve("tiny")
            assert (info.id, info.type, info.display_name) == ("tiny", "model", "tiny")
