"""Both directions of the format agree: upstream bodies parse back on the client side, and rendered answers
(full and NDJSON streams) parse back on the upstream side."""

from __future__ import annotations

import asyncio
import json

from higgs_format_ollama.format import OllamaFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    Message,
    StreamFinish,
    StreamStart,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    Tool,
    ToolArgsDelta,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
    accumulate,
)

text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
name = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
args = st.dictionaries(name, st.one_of(st.integers(), text, st.booleans()), max_size=3)


@st.composite
def conversations(draw: st.DrawFn) -> ChatRequest:
    tools = draw(st.lists(name, min_size=0, max_size=3, unique=True))
    messages: list[Message] = []
    for turn in range(draw(st.integers(1, 4))):
        prefix = f"call_{turn}"
        messages.append(Message(role="user", content=[TextBlock(text=draw(text))]))
        if tools and draw(st.booleans()):
            call = ToolUseBlock(id=prefix, name=draw(st.sampled_from(tools)), input=draw(args))
            messages.append(Message(role="assistant", content=[TextBlock(text=draw(text)), call]))
            messages.append(Message(role="user", content=[
                ToolResultBlock(tool_use_id=call.id, content=[TextBlock(text=draw(text))]), TextBlock(text="next")]))
        messages.append(Message(role="assistant", content=[TextBlock(text=draw(text))]))
    return ChatRequest(model="m", system=[TextBlock(text=draw(text))], messages=messages,
                       tools=[Tool(name=t, description="d", input_schema={"type": "object", "properties": {}})
                              for t in tools], max_tokens=draw(st.integers(1, 9999)),
                       stop=draw(st.lists(text, max_size=2)))


@settings(max_examples=60, deadline=None)
@given(conversations())
def test_upstream_body_parses_back(request):
    fmt = OllamaFormat()
    parsed = fmt.parse_chat(fmt.build_upstream_chat(request).body, {})
    assert parsed.system_text() == request.system_text()
    assert parsed.messages == request.messages  # call ids ride along, tool results find their calls
    assert [t.name for t in parsed.tools] == [t.name for t in request.tools]
    assert parsed.max_tokens == request.max_tokens and parsed.stop == request.stop


blocks = st.lists(st.one_of(text.map(lambda t: TextBlock(text=t)), text.map(lambda t: ThinkingBlock(thinking=t)),
                            st.builds(lambda n, a: ToolUseBlock(id="x", name=n, input=a), name, args)),
                  min_size=1, max_size=4)


def normalise(content: list) -> list:
    """Ollama carries one text, one thinking and a list of calls per answer: the canonical form of that."""
    thinking = "".join(b.thinking for b in content if isinstance(b, ThinkingBlock))
    texts = "".join(b.text for b in content if isinstance(b, TextBlock))
    calls = [(b.name, b.input) for b in content if isinstance(b, ToolUseBlock)]
    return [thinking, texts, calls]


@settings(max_examples=60, deadline=None)
@given(blocks)
def test_rendered_answer_parses_back(content):
    fmt = OllamaFormat()
    request = fmt.parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, {})
    response = ChatResponse(model="m", content=content, usage=Usage(input_tokens=3, output_tokens=4))
    back = fmt.parse_upstream_chat(fmt.render_chat(response, request))
    assert normalise(back.content) == normalise(content) and back.usage == response.usage


@settings(max_examples=40, deadline=None)
@given(blocks)
def test_rendered_stream_parses_back(content):
    fmt = OllamaFormat()
    request = fmt.parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, {})

    async def events():
        yield StreamStart(model="m")
        for i, block in enumerate(content):
            if isinstance(block, TextBlock):
                yield BlockStart(index=i, block=TextBlock(text=""))
                yield BlockDelta(index=i, delta=TextDelta(text=block.text))
            elif isinstance(block, ThinkingBlock):
                yield BlockStart(index=i, block=ThinkingBlock())
                yield BlockDelta(index=i, delta=ThinkingDelta(thinking=block.thinking))
            else:
                yield BlockStart(index=i, block=block.model_copy(update={"input": {}}))
                yield BlockDelta(index=i, delta=ToolArgsDelta(partial_json=json.dumps(block.input)))
            yield BlockStop(index=i)
        yield StreamFinish(usage=Usage(input_tokens=3, output_tokens=4))

    async def run() -> ChatResponse:
        lines = fmt.render_chat_stream(events(), request)
        return accumulate([e async for e in fmt.parse_upstream_chat_stream(lines)])

    back = asyncio.run(run())
    assert normalise(back.content) == normalise(content) and back.usage.output_tokens == 4
