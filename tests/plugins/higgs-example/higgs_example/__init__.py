"""An example third-party higgs plugin: provider kind ``example`` (an echo backend) and one CLI command."""

from __future__ import annotations

from collections.abc import AsyncIterator

import higgs
from higgs.config import ProviderSettings
from higgs.interfaces import CallContext, ProviderContext
from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    ModelInfo,
    StreamEvent,
    StreamFinish,
    StreamStart,
    TextBlock,
    TextDelta,
    Usage,
)
from higgs.specs import CommandSpec, ProviderSpec


class EchoProvider(higgs.Provider):
    """Answers with the last user message reversed; lists ``[provider.X] models`` (default ``echo-1``)."""

    def __init__(self, settings: ProviderSettings, ctx: ProviderContext) -> None:
        self.name = settings.name
        self.models = settings.models or ["echo-1"]

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m, owned_by=self.name) for m in self.models]

    def _answer(self, request: ChatRequest) -> tuple[str, Usage]:
        last = next((m.text() for m in reversed(request.messages) if m.role == "user"), "")
        return last[::-1], Usage(input_tokens=len(last.split()), output_tokens=len(last.split()))

    async def chat(self, request: ChatRequest, call: CallContext) -> ChatResponse:
        text, usage = self._answer(request)
        return ChatResponse(model=request.model, content=[TextBlock(text=text)], usage=usage)

    async def chat_stream(self, request: ChatRequest, call: CallContext) -> AsyncIterator[StreamEvent]:
        text, usage = self._answer(request)
        yield StreamStart(model=request.model, usage=Usage(input_tokens=usage.input_tokens))
        yield BlockStart(index=0, block=TextBlock(text=""))
        for char in text:
            yield BlockDelta(index=0, delta=TextDelta(text=char))
        yield BlockStop(index=0)
        yield StreamFinish(usage=usage)


def hello(name: str = "world") -> int:
    """Say hello (proves plugin commands reach the CLI)."""
    print(f"hello, {name}, from higgs-example")
    return 0


@higgs.hookimpl
def higgs_providers() -> list[ProviderSpec]:
    return [ProviderSpec(name="example", factory=EchoProvider, formats=("openai",),
                         description="echo provider (example plugin)")]


@higgs.hookimpl
def higgs_commands() -> list[CommandSpec]:
    return [CommandSpec(name="example-hello", target="higgs_example:hello", help="Say hello from the example.")]
