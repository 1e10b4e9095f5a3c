"""Fixtures: a fake upstream on 127.0.0.1 and providers built the way the gateway builds them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from higgs_openai import OpenAIProvider

from higgs.config import HiggsSettings, ProviderSettings
from higgs.formats.openai import OpenAIFormat
from higgs.interfaces import ProviderContext
from higgs.remote.fake import FakeUpstream


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def make_provider(fake: FakeUpstream) -> AsyncIterator[Callable[..., OpenAIProvider]]:
    made: list[OpenAIProvider] = []

    def make(gateway_key: str | None = None, **options: Any) -> OpenAIProvider:
        options.setdefault("url", fake.url + "/v1/")
        settings = HiggsSettings.model_validate({"server": {"api_key": gateway_key}} if gateway_key else {})
        ctx = ProviderContext(settings=settings, formats={"openai": OpenAIFormat()}, architectures={})
        provider = OpenAIProvider(ProviderSettings(name=options.pop("name", "oa"), **options), ctx)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()
