"""A local token-count estimate for upstreams without a count_tokens endpoint (``stub_count_tokens``).

How it estimates: text is split the way byte-pair tokenizers pre-tokenize it (words with their leading space,
digit runs, punctuation runs, whitespace runs). A word of up to 8 letters is one token (common words are
whole vocabulary entries), a longer one a token per started 5 letters; digits count one token per 3 (cl100k
splits numbers that way); punctuation one per 2 characters; each whitespace run one. On English prose and
code this lands within ~10-15% of cl100k/o200k counts. Each
message adds 3 tokens of framing, tools count their JSON schema, and each image counts a flat 1,000
tokens (its size is not known without decoding). It is an estimate: exact counts need the model's tokenizer.
"""

from __future__ import annotations

import json
import math
import re

from higgs.messages import ChatRequest, ImageBlock, TextBlock, ThinkingBlock, ToolResultBlock, ToolUseBlock

_PIECES = re.compile(r" ?[^\W\d_]+|\d+| ?[^\s\w]+|_+|\s+", re.UNICODE)
MESSAGE_OVERHEAD = 3
REQUEST_OVERHEAD = 3
IMAGE_TOKENS = 1000


def _piece_tokens(piece: str) -> int:
    word = piece.lstrip(" ")
    if not word:
        return 1
    if word[0].isdigit():
        return math.ceil(len(word) / 3)
    if word[0].isalpha():
        return 1 if len(word) <= 8 else math.ceil(len(word) / 5)
    if word.isspace():
        return 1
    return math.ceil(len(word) / 2)


def estimate_text(text: str) -> int:
    """Approximate BPE token count of ``text``."""
    return sum(_piece_tokens(piece) for piece in _PIECES.findall(text))


def _block_tokens(block: object) -> int:
    if isinstance(block, TextBlock):
        return estimate_text(block.text)
    if isinstance(block, ThinkingBlock):
        return estimate_text(block.thinking)
    if isinstance(block, ImageBlock):
        return IMAGE_TOKENS
    if isinstance(block, ToolUseBlock):
        return estimate_text(block.name) + estimate_text(json.dumps(block.input))
    if isinstance(block, ToolResultBlock):
        return 2 + sum(_block_tokens(part) for part in block.content)
    return 0


def estimate_chat(request: ChatRequest) -> int:
    """Approximate input tokens of a chat request: system, messages, tools."""
    total = REQUEST_OVERHEAD
    if request.system:
        total += MESSAGE_OVERHEAD + sum(estimate_text(b.text) for b in request.system)
    for message in request.messages:
        total += MESSAGE_OVERHEAD + sum(_block_tokens(b) for b in message.content)
    for tool in request.tools:
        total += estimate_text(tool.name) + estimate_text(tool.description or "")
        total += estimate_text(json.dumps(tool.input_schema, separators=(",", ":")))
    return total
