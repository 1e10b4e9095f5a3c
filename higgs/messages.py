"""The canonical model: what every wire format parses into and renders from.

A format plugin turns its wire JSON into these records (and back), a provider consumes and produces them,
so translating OpenAI <-> Anthropic is parse-with-one, render-with-the-other.

Design rules:
- Records are pydantic models; content is a list of typed blocks discriminated by ``type``.
- Unknown request fields are kept in ``extra`` (never dropped), unknown content blocks in ``UnknownBlock``.
- Streams are sequences of ``StreamEvent`` records: start, block start/delta/stop, finish, error.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

# --------------------------------------------------------------------------------------------------
# Content blocks
# --------------------------------------------------------------------------------------------------


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextBlock(_Block):
    """Plain text. ``cache_control`` is Anthropic's prompt-caching marker, kept for pass-through."""

    type: Literal["text"] = "text"
    text: str
    cache_control: dict[str, Any] | None = None


class ImageBlock(_Block):
    """An image, either inline (``data`` is base64 with ``media_type``) or by ``url``."""

    type: Literal["image"] = "image"
    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    detail: str | None = None


class ToolUseBlock(_Block):
    """A tool call made by the assistant. ``input`` is the parsed JSON arguments."""

    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(_Block):
    """The result of a tool call, sent back by the user side."""

    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: list[TextBlock | ImageBlock] = Field(default_factory=list)
    is_error: bool = False


class ThinkingBlock(_Block):
    """Model reasoning. ``redacted`` blocks carry opaque ``data`` instead of text."""

    type: Literal["thinking"] = "thinking"
    thinking: str = ""
    signature: str | None = None
    redacted: bool = False
    data: str | None = None


class UnknownBlock(BaseModel):
    """A block type higgs does not model (``server_tool_use``, ``document``, ...), kept verbatim.

    Same-format pass-through forwards it untouched; translation skips it with a debug log.
    """

    model_config = ConfigDict(extra="allow")
    type: str
    raw: dict[str, Any] = Field(default_factory=dict)


KNOWN_BLOCK_TYPES = frozenset({"text", "image", "tool_use", "tool_result", "thinking"})


def _block_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if isinstance(value, UnknownBlock):
        return "unknown"
    return kind if kind in KNOWN_BLOCK_TYPES else "unknown"


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[UnknownBlock, Tag("unknown")],
    Discriminator(_block_tag),
]


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


class Message(BaseModel):
    """One conversation turn. System text lives in ``ChatRequest.system``, not here."""

    role: Literal["user", "assistant"]
    content: list[ContentBlock] = Field(default_factory=list)

    def text(self) -> str:
        """The concatenated text blocks of this message."""
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))


class Tool(BaseModel):
    """A function tool the model may call; ``input_schema`` is a JSON schema object."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    extra: dict[str, Any] = Field(default_factory=dict)


class ToolChoice(BaseModel):
    """``auto`` (model decides), ``any`` (must call some tool), ``none``, or ``tool`` (must call ``name``)."""

    type: Literal["auto", "any", "none", "tool"] = "auto"
    name: str | None = None
    disable_parallel_tool_use: bool = False


class ResponseFormat(BaseModel):
    """Structured output: free ``text``, any ``json_object``, or JSON matching ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


class Reasoning(BaseModel):
    """Reasoning options: ``enabled`` (None = model default), a token budget and/or an effort level."""

    enabled: bool | None = None
    budget_tokens: int | None = None
    effort: Literal["minimal", "low", "medium", "high"] | None = None


class Sampling(BaseModel):
    """Sampling parameters; ``None`` means the backend's default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class ChatRequest(BaseModel):
    """A chat request in canonical form.

    ``extra`` holds the request's fields that the parsing format did not model, so pass-through and
    same-format rendering keep them. ``max_tokens`` is None when the client gave none.
    """

    model: str
    system: list[TextBlock] = Field(default_factory=list)
    messages: list[Message] = Field(default_factory=list)
    tools: list[Tool] = Field(default_factory=list)
    tool_choice: ToolChoice | None = None
    max_tokens: int | None = None
    stop: list[str] = Field(default_factory=list)
    sampling: Sampling = Field(default_factory=Sampling)
    n: int = 1
    response_format: ResponseFormat | None = None
    reasoning: Reasoning | None = None
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    #: The wire format this request was parsed from; builders forward ``extra`` only to that same format.
    source_format: str | None = None

    def system_text(self) -> str:
        """The system prompt as one string (blocks joined by blank lines)."""
        return "\n\n".join(b.text for b in self.system)


class CompletionRequest(BaseModel):
    """A legacy text completion (``/v1/completions``). ``prompt`` is text or token ids."""

    model: str
    prompt: list[str] | list[list[int]] = Field(default_factory=list)
    max_tokens: int | None = None
    stop: list[str] = Field(default_factory=list)
    sampling: Sampling = Field(default_factory=Sampling)
    n: int = 1
    echo: bool = False
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class EmbeddingRequest(BaseModel):
    """An embeddings request: texts or token-id arrays; ``dimensions`` truncates where allowed."""

    model: str
    input: list[str] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal", "pause_turn"]


class Usage(BaseModel):
    """Token accounting. ``input_tokens`` includes ``cached_tokens`` (OpenAI's convention)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0


def new_id(prefix: str = "msg") -> str:
    """A fresh random id such as ``msg_3f2a...``."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class ChatResponse(BaseModel):
    """A complete (non-streamed) chat answer."""

    id: str = Field(default_factory=new_id)
    model: str
    created: int = Field(default_factory=lambda: int(time.time()))
    content: list[ContentBlock] = Field(default_factory=list)
    stop_reason: StopReason | None = "end_turn"
    stop_sequence: str | None = None
    usage: Usage = Field(default_factory=Usage)
    extra: dict[str, Any] = Field(default_factory=dict)


class CompletionChoice(BaseModel):
    """One text-completion choice."""

    index: int = 0
    text: str
    stop_reason: StopReason | None = "end_turn"


class CompletionResponse(BaseModel):
    """A complete text-completion answer."""

    id: str = Field(default_factory=lambda: new_id("cmpl"))
    model: str
    created: int = Field(default_factory=lambda: int(time.time()))
    choices: list[CompletionChoice] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)


class EmbeddingResponse(BaseModel):
    """Embedding vectors, one per input, in input order."""

    model: str
    data: list[list[float]]
    usage: Usage = Field(default_factory=Usage)


class ModelInfo(BaseModel):
    """One entry of ``/v1/models``: ``owned_by`` names the provider that serves it."""

    id: str
    owned_by: str
    created: int = 0
    kind: Literal["local", "remote", "alias"] = "remote"
    context_length: int | None = None


# --------------------------------------------------------------------------------------------------
# Stream events
# --------------------------------------------------------------------------------------------------


class TextDelta(BaseModel):
    """More text for a text block."""

    type: Literal["text"] = "text"
    text: str


class ThinkingDelta(BaseModel):
    """More reasoning text for a thinking block."""

    type: Literal["thinking"] = "thinking"
    thinking: str


class SignatureDelta(BaseModel):
    """The signature that closes a thinking block (Anthropic)."""

    type: Literal["signature"] = "signature"
    signature: str


class ToolArgsDelta(BaseModel):
    """A fragment of a tool call's JSON arguments, to be concatenated."""

    type: Literal["tool_args"] = "tool_args"
    partial_json: str


Delta = Annotated[TextDelta | ThinkingDelta | SignatureDelta | ToolArgsDelta, Field(discriminator="type")]


class StreamStart(BaseModel):
    """First event of every stream. ``usage.input_tokens`` is filled when known up front."""

    type: Literal["start"] = "start"
    id: str = Field(default_factory=new_id)
    model: str
    created: int = Field(default_factory=lambda: int(time.time()))
    usage: Usage = Field(default_factory=Usage)


class BlockStart(BaseModel):
    """A content block opens at ``index``. Text/thinking blocks start empty; tool_use with ``input={}``."""

    type: Literal["block_start"] = "block_start"
    index: int
    block: ContentBlock


class BlockDelta(BaseModel):
    """Incremental content for the open block at ``index``."""

    type: Literal["block_delta"] = "block_delta"
    index: int
    delta: Delta


class BlockStop(BaseModel):
    """The block at ``index`` is complete."""

    type: Literal["block_stop"] = "block_stop"
    index: int


class StreamFinish(BaseModel):
    """The answer is complete: why it stopped and the final usage. Nothing follows but the end."""

    type: Literal["finish"] = "finish"
    stop_reason: StopReason | None = "end_turn"
    stop_sequence: str | None = None
    usage: Usage = Field(default_factory=Usage)


class ErrorInfo(BaseModel):
    """A format-neutral error: HTTP ``status``, a canonical ``kind`` and a human message.

    ``kind`` is one of: invalid_request, authentication, permission, not_found, request_too_large,
    rate_limit, api_error, overloaded, timeout, context_length_exceeded, upstream_unreachable.
    """

    status: int = 500
    kind: str = "api_error"
    message: str
    param: str | None = None
    code: str | None = None
    retry_after: float | None = None


class StreamError(BaseModel):
    """The stream failed; a format renders it as its error event and ends the stream."""

    type: Literal["error"] = "error"
    error: ErrorInfo


StreamEvent = Annotated[
    StreamStart | BlockStart | BlockDelta | BlockStop | StreamFinish | StreamError,
    Field(discriminator="type"),
]


def accumulate(events: list[Any], model: str = "") -> ChatResponse:
    """Fold a list of stream events into the equivalent ``ChatResponse`` (tests, non-stream fallbacks)."""
    import json

    response = ChatResponse(model=model)
    blocks: dict[int, Any] = {}
    args: dict[int, str] = {}
    for event in events:
        if isinstance(event, StreamStart):
            response.id, response.model, response.created = event.id, event.model, event.created
            response.usage = event.usage.model_copy()
        elif isinstance(event, BlockStart):
            blocks[event.index] = event.block.model_copy(deep=True)
        elif isinstance(event, BlockDelta):
            block, delta = blocks[event.index], event.delta
            if isinstance(delta, TextDelta):
                block.text += delta.text
            elif isinstance(delta, ThinkingDelta):
                block.thinking += delta.thinking
            elif isinstance(delta, SignatureDelta):
                block.signature = (block.signature or "") + delta.signature
            else:
                args[event.index] = args.get(event.index, "") + delta.partial_json
        elif isinstance(event, StreamFinish):
            response.stop_reason, response.stop_sequence = event.stop_reason, event.stop_sequence
            response.usage = event.usage.model_copy()
    for index, text in args.items():
        blocks[index].input = json.loads(text) if text.strip() else {}
    response.content = [blocks[i] for i in sorted(blocks)]
    return response
