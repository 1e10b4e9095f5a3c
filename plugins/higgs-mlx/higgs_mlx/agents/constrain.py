"""Constrained decoding through outlines-core: a regex -> a token index -> a logits mask each step.

- ``vocabulary_for(tokenizer)`` maps every token id to the bytes it decodes to (byte-level BPE and
  SentencePiece byte-fallback handled), without special tokens (except tool-call markers and reasoning tags) and
  without EOS, and caches it per tokenizer.
- ``compile_regex(tokenizer, regex)`` builds outlines-core's ``Index`` for the regex over that vocabulary;
  indexes are cached (LRU, keyed by tokenizer and regex hash), so a schema is compiled once.
- ``RegexConstraint`` is an mlx-lm logits processor: each step it lets through only the tokens that keep
  the output a prefix of a match, and EOS once the match is complete. It is also *length-aware*: given
  ``max_tokens`` it knows, for every index state, the fewest tokens that finish a match, and when the
  remaining budget gets that tight it only allows tokens that still finish in time. So output is valid
  even when generation stops at ``max_tokens`` - "whatever the weights" includes a model that rambles
  inside a string.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from higgs.errors import InvalidRequestError

from higgs_mlx.agents._tok import hf_tokenizer

if TYPE_CHECKING:
    import mlx.core as mx
    import numpy as np

log = logging.getLogger("higgs.mlx.agents")

#: Compiled indexes kept (each holds a token-level automaton; a few MB for a large vocabulary).
INDEX_CACHE_SIZE = 64

_lock = threading.Lock()
_vocabularies: weakref.WeakKeyDictionary[Any, TokenVocabulary] = weakref.WeakKeyDictionary()
_indexes: OrderedDict[tuple[int, str], CompiledIndex] = OrderedDict()


@dataclass
class TokenVocabulary:
    """A tokenizer's vocabulary as outlines-core needs it, plus what the mask needs."""

    vocabulary: Any  # outlines_core.Vocabulary
    size: int
    eos_ids: tuple[int, ...]
    uid: int


@dataclass
class CompiledIndex:
    """An outlines-core ``Index`` plus per-state distances (fewest tokens to a complete match)."""

    index: Any
    vocab: TokenVocabulary
    _dist: dict[int, int] | None = None
    _arrays: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    max_dist: int = 0

    def distances(self) -> dict[int, int]:
        """Fewest tokens from each state to a final state (computed once, backwards BFS)."""
        if self._dist is None:
            transitions: dict[int, dict[int, int]] = self.index.get_transitions()
            reverse: dict[int, list[int]] = {}
            for state, edges in transitions.items():
                for nxt in set(edges.values()):
                    reverse.setdefault(nxt, []).append(state)
            dist = {s: 0 for s in self.index.get_final_states()}
            queue = deque(dist)
            while queue:
                state = queue.popleft()
                for prev in reverse.get(state, ()):
                    if prev not in dist:
                        dist[prev] = dist[state] + 1
                        queue.append(prev)
            self._dist = dist
            self.max_dist = max(dist.values(), default=0)
        return self._dist

    def tokens_within(self, state: int, budget: int) -> np.ndarray:
        """Token ids from ``state`` whose next state can still finish within ``budget`` more tokens."""
        import numpy as np

        if state not in self._arrays:
            dist = self.distances()
            edges: dict[int, int] = self.index.get_transitions().get(state, {})
            toks = np.fromiter(edges.keys(), dtype=np.int64, count=len(edges))
            nd = np.fromiter((dist.get(s, 1 << 30) for s in edges.values()), dtype=np.int64, count=len(edges))
            self._arrays[state] = (toks, nd)
        toks, nd = self._arrays[state]
        return toks[nd <= budget]


def _decoder_json(hf: Any) -> str:
    """The tokenizer's decoder config as JSON text (only the decoder: serialising the whole tokenizer costs
    seconds for a 262k vocabulary)."""
    decoder = getattr(hf.backend_tokenizer, "decoder", None)
    if decoder is None:
        return "{}"
    try:
        state = decoder.__getstate__()
        return state.decode() if isinstance(state, bytes) else json.dumps(state)
    except (AttributeError, TypeError, ValueError):
        return json.dumps(json.loads(hf.backend_tokenizer.to_str()).get("decoder") or {})


def _token_bytes(hf: Any, vocab: dict[str, int]) -> dict[int, bytes]:
    """Every regular token id -> the bytes it stands for."""
    decoder = _decoder_json(hf)
    out: dict[int, bytes] = {}
    if '"ByteLevel"' in decoder:
        from higgs_mlx.agents._bytes import byte_decoder

        table = byte_decoder()
        for token, tid in vocab.items():
            try:
                out[tid] = bytes(table[ch] for ch in token)
            except KeyError:
                out[tid] = token.encode()
    elif '"ByteFallback"' in decoder or '"Metaspace"' in decoder or "▁" in decoder:
        for token, tid in vocab.items():
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                out[tid] = bytes([int(token[3:5], 16)])
            else:
                out[tid] = token.replace("▁", " ").encode()
    else:
        for token, tid in vocab.items():
            out[tid] = hf.convert_tokens_to_string([token]).encode()
    return out


def _markup_tokens() -> frozenset[str]:
    """Special tokens a forced call may be spelled with: every syntax's markers and the reasoning tags."""
    from higgs_mlx.agents.syntaxes import SYNTAXES

    markers = {m for cls in SYNTAXES.values() for m in cls.markers}
    return frozenset(markers | {"<think>", "</think>", "</tool_call>", "<|/tool_call|>", "<tool_call|>", "[ARGS]",
                                "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>",  # noqa: RUF001
                                "<｜tool▁sep｜>"})  # noqa: RUF001


def vocabulary_for(tokenizer: Any) -> TokenVocabulary:
    """The outlines-core vocabulary of ``tokenizer`` (an mlx-lm ``TokenizerWrapper`` or HF tokenizer)."""
    with _lock:
        cached = _vocabularies.get(tokenizer)
    if cached is not None:
        return cached
    from outlines_core import Vocabulary

    hf = hf_tokenizer(tokenizer)
    declared = getattr(tokenizer, "eos_token_ids", None)
    declared = [declared] if isinstance(declared, int) else list(declared or [])
    eos_ids = sorted(set(declared) | ({hf.eos_token_id} if hf.eos_token_id is not None else set()))
    if not eos_ids:
        raise InvalidRequestError("Constrained decoding needs a tokenizer with an end-of-sequence token.")
    keep = _markup_tokens()
    added_tokens = hf.added_tokens_decoder
    specials = {tid for tid, tok in added_tokens.items() if tok.special and tok.content not in keep}
    added = {tid: tok.content for tid, tok in added_tokens.items() if not tok.special}
    full_vocab: dict[str, int] = hf.get_vocab()
    by_bytes: dict[bytes, list[int]] = {}
    for tid, raw in _token_bytes(hf, full_vocab).items():
        if tid in specials or tid in eos_ids:
            continue
        if tid in added:
            raw = added[tid].encode()
        if raw:
            by_bytes.setdefault(raw, []).append(tid)
    size = max(len(hf), max(full_vocab.values(), default=0) + 1)
    vocab = TokenVocabulary(Vocabulary(eos_ids[0], by_bytes), size, tuple(eos_ids), id(tokenizer))
    with _lock:
        _vocabularies[tokenizer] = vocab
    return vocab


def compile_regex(tokenizer: Any, regex: str) -> CompiledIndex:
    """The (cached) index of ``regex`` over ``tokenizer``'s vocabulary."""
    vocab = vocabulary_for(tokenizer)
    key = (vocab.uid, hashlib.sha256(regex.encode()).hexdigest())
    with _lock:
        hit = _indexes.get(key)
        if hit is not None and hit.vocab is vocab:
            _indexes.move_to_end(key)
            return hit
    from outlines_core import Index

    try:
        index = Index(regex, vocab.vocabulary)
    except Exception as err:  # outlines-core raises ValueError/RuntimeError subclasses from Rust
        raise InvalidRequestError(f"The output constraint cannot be compiled for this model: {err}",
                                  param="response_format", code="unsupported_schema") from err
    compiled = CompiledIndex(index, vocab)
    with _lock:
        _indexes[key] = compiled
        while len(_indexes) > INDEX_CACHE_SIZE:
            _indexes.popitem(last=False)
    return compiled


def cache_info() -> dict[str, int]:
    """Sizes of the caches (for tests and ``state()``)."""
    with _lock:
        return {"indexes": len(_indexes), "vocabularies": len(_vocabularies)}


class RegexConstraint:
    """mlx-lm logits processor that keeps the output inside a compiled regex.

    Args:
        compiled: the index.
        max_tokens: the generation's token limit, for length-aware masking (None: not length-aware).
        reasoning: ``(open_ids, close_ids, lead_index)`` when the family reasons: if the prompt (the tokens
            of the first call) leaves a reasoning block open, the model reasons freely and the constraint
            starts after the closing tag, with ``lead_index()`` (the regex with leading whitespace).
    """

    def __init__(self, compiled: CompiledIndex, *, max_tokens: int | None = None,
                 reasoning: tuple[list[int], list[int], Callable[[], CompiledIndex]] | None = None) -> None:
        from outlines_core import Guide

        self.compiled = compiled
        self.guide = Guide(compiled.index)
        self.max_tokens = max_tokens
        self.reasoning = reasoning
        self.start_after: list[int] = []
        self.active = True
        self.generated = 0
        self.constrained = 0
        self._seen: int | None = None
        self._recent: list[int] = []
        if max_tokens is not None:
            need = compiled.distances().get(self.guide.get_state())
            if need is None or need + 1 > max_tokens:
                raise InvalidRequestError(
                    f"max_tokens={max_tokens} is too small for the requested output format "
                    f"(the shortest valid output needs {need} tokens and an end token).", param="max_tokens")

    def _first_call(self, prompt: list[int]) -> None:
        """Start after the reasoning block when the prompt opened one."""
        from higgs_mlx.agents.reasoning import ids_open_reasoning

        if self.reasoning is None:
            return
        open_ids, close_ids, lead_index = self.reasoning
        if ids_open_reasoning(prompt, open_ids, close_ids):
            from outlines_core import Guide

            self.compiled = lead_index()
            self.compiled.distances()
            self.guide = Guide(self.compiled.index)
            self.start_after = list(close_ids)
            self.active = False

    def _observe(self, tokens: list[int]) -> None:
        for tok in tokens:
            self.generated += 1
            if not self.active:
                self._recent = [*self._recent, tok][-len(self.start_after):]
                if self._recent == self.start_after:
                    self.active = True
                continue
            if self.guide.is_finished():
                continue
            try:
                self.guide.advance(token_id=tok, return_tokens=False)
                self.constrained += 1
            except Exception:  # the sampler picked a masked token: an engine bug, keep serving
                log.warning("constrained decoding: token %d was not allowed; constraint dropped", tok)
                self.active = False
                self.start_after = [-1]

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        """Mask ``logits`` (shape ``(1, vocab)`` or ``(vocab,)``) to the allowed tokens."""
        import mlx.core as mx
        import numpy as np

        n = int(tokens.size)
        if self._seen is None:
            self._seen = n
            if self.reasoning is not None:
                self._first_call([int(t) for t in np.asarray(tokens[-4096:]).tolist()])
        elif n > self._seen:
            self._observe([int(t) for t in np.asarray(tokens[self._seen:]).tolist()])
            self._seen = n
        if not self.active:
            return logits
        width = logits.shape[-1]
        allowed = np.zeros(width, dtype=bool)
        vocab = self.compiled.vocab
        final = self.guide.is_finished() or self.compiled.index.is_final_state(self.guide.get_state())
        if not self.guide.is_finished():
            # one token is kept for EOS, so a complete output ends naturally (end_turn / tool_use), not by length
            remaining = None if self.max_tokens is None else self.max_tokens - self.generated - 1
            if remaining is not None and remaining - 1 < self.compiled.max_dist + 1:
                self.compiled.distances()
                toks = self.compiled.tokens_within(self.guide.get_state(), max(remaining - 1, 0))
                allowed[toks[toks < width]] = True
            else:
                words = (vocab.size + 31) // 32
                bits = np.zeros(words, dtype=np.int32)
                self.guide.write_mask_into(bits.ctypes.data, words, 4)
                unpacked = np.unpackbits(bits.view(np.uint8), bitorder="little").astype(bool)
                m = min(width, unpacked.size)
                allowed[:m] = unpacked[:m]
        if final:
            for eos in vocab.eos_ids:
                if eos < width:
                    allowed[eos] = True
        if not allowed.any():  # cannot happen for a consistent index; never return an all -inf row
            log.warning("constrained decoding: no token allowed in state %s", self.guide.get_state())
            return logits
        keep = mx.array(allowed)
        return mx.where(keep, logits, mx.array(-float("inf"), dtype=logits.dtype))
