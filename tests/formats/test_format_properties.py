"""Property tests: a request built in a format and parsed back in the same format keeps its meaning.

The strategies generate canonical requests restricted to what each wire format can express (e.g. OpenAI has
one text per assistant turn, Anthropic has no ``n``); building the wire body and parsing it back must give
the same canonical request, and building again must give the same body.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from higgs.formats.anthropic import AnthropicFormat
from higgs.formats.openai import OpenAIFormat
from higgs.messages import (
    ChatRequest,
    ChatResponse,
    ImageBlock,
    Message,
    Reasoning,
    ResponseFormat,
    Sampling,
    TextBlock,
    ThinkingBlock,
    Tool,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
    UnknownBlock,
    Usage,
)

oa, an = OpenAIFormat(), AnthropicFormat()
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(min_size=1, max_size=30)
ident = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,15}", fullmatch=True)
json_leaf = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=10)
json_obj = st.dictionaries(ident, st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                                               | st.dictionaries(ident, inner, max_size=3), max_leaves=6),
                           max_size=4)
floats = st.floats(min_value=0, max_value=1, allow_nan=False).map(lambda x: round(x, 3))
images = st.builds(ImageBlock, media_type=st.sampled_from(["image/png", "image/jpeg"]),
                   data=st.from_regex(r"[A-Za-z0-9+/]{4,16}={0,2}", fullmatch=True)) | \
    st.builds(ImageBlock, url=st.from_regex(r"https://example\.com/[a-z]{1,8}\.png", fullmatch=True))
tool_use = st.builds(ToolUseBlock, id=ident, name=ident, input=json_obj)


def schema(draw_name: str) -> dict:
    return {"type": "object", "properties": {draw_name: {"type": "string"}}}


tools = st.lists(st.builds(lambda n, d: Tool(name=n, description=d, input_schema=schema(n)), ident,
                           st.none() | text), max_size=3, unique_by=lambda t: t.name)


@st.composite
def tool_choice(draw, available):
    if not available:
        return None
    kind = draw(st.sampled_from(["auto", "any", "none", "tool", None]))
    if kind is None:
        return None
    return ToolChoice(type=kind, name=draw(st.sampled_from([t.name for t in available])) if kind == "tool" else None,
                      disable_parallel_tool_use=kind != "none" and draw(st.booleans()))


# -- OpenAI ---------------------------------------------------------------------------------------


@st.composite
def openai_messages(draw):
    messages = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["user", "assistant", "tool"]))
        if kind == "user":
            blocks = draw(st.lists(st.builds(TextBlock, text=text) | images, min_size=1, max_size=3))
            messages.append(Message(role="user", content=blocks))
        elif kind == "assistant":
            blocks = []
            if draw(st.booleans()):
                blocks.append(ThinkingBlock(thinking=draw(text)))
            calls = draw(st.lists(tool_use, max_size=2))
            if draw(st.booleans()) or not calls:
                blocks.append(TextBlock(text=draw(text)))
            messages.append(Message(role="assistant", content=blocks + calls))
        else:
            if messages and messages[-1].content and isinstance(messages[-1].content[0], ToolResultBlock):
                continue  # consecutive tool messages are one user turn: generate them together
            results = draw(st.lists(st.builds(ToolResultBlock, tool_use_id=ident,
                                              content=st.lists(st.builds(TextBlock, text=text), min_size=1,
                                                               max_size=1)), min_size=1, max_size=3))
            messages.append(Message(role="user", content=results))
    return messages


@st.composite
def openai_requests(draw):
    available = draw(tools)
    stream = draw(st.booleans())
    return ChatRequest(
        model=draw(st.sampled_from(["gpt-4o", "llama3"])),
        system=draw(st.lists(st.builds(TextBlock, text=text), max_size=3)),
        messages=draw(openai_messages()),
        tools=available,
        tool_choice=draw(tool_choice(available)),
        max_tokens=draw(st.none() | st.integers(1, 100000)),
        stop=draw(st.lists(text, max_size=4)),
        sampling=Sampling(temperature=draw(st.none() | floats), top_p=draw(st.none() | floats),
                          seed=draw(st.none() | st.integers(0, 2**31)),
                          presence_penalty=draw(st.none() | floats), frequency_penalty=draw(st.none() | floats),
                          logit_bias=draw(st.none() | st.dictionaries(st.integers(0, 50000), floats, min_size=1,
                                                                      max_size=3)),
                          logprobs=draw(st.booleans()), top_logprobs=draw(st.none() | st.integers(0, 5))),
        n=draw(st.integers(1, 3)),
        response_format=draw(st.none() | st.builds(ResponseFormat, type=st.sampled_from(["text", "json_object"])) |
                             st.builds(ResponseFormat, type=st.just("json_schema"), json_schema=json_obj,
                                       name=ident, strict=st.none() | st.booleans())),
        reasoning=draw(st.none() | st.builds(Reasoning, effort=st.sampled_from(["low", "medium", "high"]))),
        stream=stream,
        include_usage=stream,
        user=draw(st.none() | ident),
        extra=draw(st.dictionaries(st.sampled_from(["store", "service_tier", "prediction", "modalities"]),
                                   json_leaf, max_size=2)),
        source_format="openai",
    )


@SETTINGS
@given(openai_requests())
def test_openai_build_then_parse_keeps_meaning(request):
    body = oa.build_upstream_chat(request).body
    parsed = oa.parse_chat(body, {})
    assert parsed.model_dump() == request.model_dump()
    assert oa.build_upstream_chat(parsed).body == body


# -- Anthropic ------------------------------------------------------------------------------------

cache = st.none() | st.just({"type": "ephemeral"})
nonempty_text = st.builds(TextBlock, text=text, cache_control=cache)


@st.composite
def anthropic_messages(draw):
    messages = []
    for i in range(draw(st.integers(1, 6))):
        role = "user" if i % 2 == 0 else "assistant"
        if role == "user":
            results = draw(st.lists(st.builds(ToolResultBlock, tool_use_id=ident,
                                              content=st.lists(st.builds(TextBlock, text=text) | images, max_size=2),
                                              is_error=st.booleans()), max_size=2))
            rest = draw(st.lists(nonempty_text | images | st.builds(
                UnknownBlock, type=st.just("document"), raw=st.just({"type": "document", "source": {
                    "type": "text", "media_type": "text/plain", "data": "doc"}})), max_size=3))
            blocks = results + rest or [TextBlock(text=draw(text))]
        else:
            blocks = draw(st.lists(
                st.builds(ThinkingBlock, thinking=text, signature=ident)
                | st.builds(ThinkingBlock, redacted=st.just(True), data=ident)
                | nonempty_text | tool_use, min_size=1, max_size=4))
        messages.append(Message(role=role, content=blocks))
    return messages


@st.composite
def anthropic_requests(draw):
    available = draw(st.lists(st.builds(lambda n, c: Tool(name=n, input_schema=schema(n),
                                                          extra={"cache_control": c} if c else {}), ident, cache),
                              max_size=3, unique_by=lambda t: t.name))
    user = draw(st.none() | ident)
    return ChatRequest(
        model="claude-sonnet-4-5",
        system=draw(st.lists(nonempty_text, max_size=3)),
        messages=draw(anthropic_messages()),
        tools=available,
        tool_choice=draw(tool_choice(available)),
        max_tokens=draw(st.integers(1, 64000)),
        stop=draw(st.lists(text, max_size=3)),
        sampling=Sampling(temperature=draw(st.none() | floats), top_p=draw(st.none() | floats),
                          top_k=draw(st.none() | st.integers(1, 500))),
        reasoning=draw(st.none() | st.builds(Reasoning, enabled=st.just(True), budget_tokens=st.integers(1024, 9999))
                       | st.just(Reasoning(enabled=False))),
        stream=draw(st.booleans()),
        user=user,
        metadata={"user_id": user} if user else {},
        extra=draw(st.dictionaries(st.sampled_from(["service_tier", "container", "context_management"]), json_leaf,
                                   max_size=2)),
        source_format="anthropic",
    )


def _tool_results_first(request: ChatRequest) -> ChatRequest:
    """Anthropic wants tool results to open a user turn; the builder moves them there."""
    messages = []
    for m in request.messages:
        content = sorted(m.content, key=lambda b: not isinstance(b, ToolResultBlock)) if m.role == "user" else m.content
        messages.append(m.model_copy(update={"content": content}))
    return request.model_copy(update={"messages": messages})


@SETTINGS
@given(anthropic_requests())
def test_anthropic_build_then_parse_keeps_meaning(request):
    body = an.build_upstream_chat(request).body
    parsed = an.parse_chat(body, {})
    assert parsed.model_dump() == _tool_results_first(request).model_dump()
    assert an.build_upstream_chat(parsed).body == body


# -- across formats: whatever we generate, the other format's builder gives a body its parser accepts ----


@SETTINGS
@given(openai_requests())
def test_openai_requests_translate_to_valid_anthropic_bodies(request):
    request = request.model_copy(update={"n": 1})
    body = an.build_upstream_chat(request, default_max_tokens=1000).body
    back = an.parse_chat(body, {})
    roles = [m["role"] for m in body["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles))  # strictly alternating
    assert roles[0] == "user"
    assert all(m["content"] for m in body["messages"])  # no empty turns
    assert all(isinstance(b, dict) and b.get("text", "x") for m in body["messages"] for b in m["content"])
    assert [t.name for t in back.tools] == [t.name for t in request.tools]


@SETTINGS
@given(anthropic_requests())
def test_anthropic_requests_translate_to_valid_openai_bodies(request):
    body = oa.build_upstream_chat(request).body
    back = oa.parse_chat(body, {})
    assert all(isinstance(m["content"], str) for m in body["messages"] if m["role"] == "tool")
    assert all(m["role"] in ("system", "user", "assistant", "tool") for m in body["messages"])
    assert back.max_tokens == request.max_tokens and "top_k" not in body


# -- responses: rendered for a client and parsed back as an upstream answer ---------------------------

usage = st.builds(lambda i, c, o: Usage(input_tokens=i + c, cached_tokens=c, output_tokens=o),
                  st.integers(0, 10**6), st.integers(0, 10**5), st.integers(0, 10**5))


@SETTINGS
@given(thinking=st.none() | text, said=st.none() | text, calls=st.lists(tool_use, max_size=3), used=usage,
       stop=st.sampled_from(["end_turn", "max_tokens"]))
def test_openai_response_render_then_parse(thinking, said, calls, used, stop):
    content = ([ThinkingBlock(thinking=thinking)] if thinking else []) + ([TextBlock(text=said)] if said else [])
    response = ChatResponse(id="chatcmpl-1", model="m", created=1, content=content + calls,
                            stop_reason="tool_use" if calls else stop, usage=used)
    request = ChatRequest(model="m")
    assert oa.parse_upstream_chat(oa.render_chat(response, request)).model_dump() == response.model_dump()


@SETTINGS
@given(blocks=st.lists(st.builds(ThinkingBlock, thinking=text, signature=ident) | st.builds(TextBlock, text=text)
                       | tool_use | st.builds(ThinkingBlock, redacted=st.just(True), data=ident), max_size=5),
       used=usage, stop=st.sampled_from(["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]))
def test_anthropic_response_render_then_parse(blocks, used, stop):
    response = ChatResponse(id="msg_1", model="m", created=1, content=blocks, stop_reason=stop, usage=used,
                            stop_sequence="END" if stop == "stop_sequence" else None)
    parsed = an.parse_upstream_chat(an.render_chat(response, ChatRequest(model="m")))
    assert parsed.model_dump(exclude={"created"}) == response.model_dump(exclude={"created"})
