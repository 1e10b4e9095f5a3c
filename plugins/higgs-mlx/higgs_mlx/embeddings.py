"""Embeddings for local models (``/v1/embeddings``).

Two kinds of model embed:

- **Embedding models** (BERT family and other sentence-transformers directories, e.g. all-MiniLM-L6-v2):
  loaded with mlx-embeddings, pooled the way the directory's sentence-transformers config says (mean, CLS
  or max over the last hidden states; L2-normalised when it has a ``Normalize`` module). A ``[[models]]``
  entry whose directory is one (``is_embedding_model``) is served for embeddings only.
- **Decoder (chat) models**: the documented pooling is the mean of the final hidden states (after the
  model's last norm) over the input's tokens, L2-normalised. Not a trained embedding, but stable and
  useful for similarity between texts of the same model.

``embed_request`` does the request-level work: validation, batching (inputs sorted by length, batches of
at most ``BATCH_TOKENS`` padded tokens), ``dimensions`` (truncate then re-normalise, like OpenAI's
``text-embedding-3``; more than the model has is a 400) and usage. MLX work must run on the engine
thread: the provider calls ``embed_request`` through ``Engine.call``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from higgs.errors import InvalidRequestError
from higgs.messages import EmbeddingRequest, EmbeddingResponse, Usage

log = logging.getLogger("higgs.mlx.embeddings")

#: Most inputs per request (OpenAI's limit).
MAX_INPUTS = 2048
#: Padded tokens per forward pass.
BATCH_TOKENS = 8192
#: ``model_type`` values that are encoders (never chat models), served as embedding models.
ENCODER_TYPES = frozenset({"bert", "xlm-roberta", "roberta", "modernbert", "distilbert"})


class Embedder(Protocol):
    """Something that turns token ids into vectors (runs on the engine thread)."""

    name: str
    dimensions: int
    max_length: int

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as the model expects them (special tokens included)."""
        ...

    def embed_batch(self, batch: list[list[int]]) -> list[list[float]]:
        """One vector per id list (already within ``max_length``)."""
        ...


def is_embedding_model(path: Path) -> bool:
    """Whether the model directory at ``path`` is an embedding model (sentence-transformers or an encoder)."""
    if (path / "modules.json").is_file() or (path / "sentence_bert_config.json").is_file():
        return True
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("model_type") in ENCODER_TYPES


@dataclass
class Pooling:
    """How token states become one vector."""

    mode: str = "mean"  # mean | cls | max
    normalize: bool = True

    @classmethod
    def from_directory(cls, path: Path) -> Pooling:
        """Read sentence-transformers' ``modules.json`` / ``*_Pooling/config.json`` (mean + normalize if absent)."""
        try:
            modules = json.loads((path / "modules.json").read_text())
        except (OSError, ValueError):
            return cls()
        pooling = cls(normalize=any(m.get("type", "").endswith(".Normalize") for m in modules))
        for module in modules:
            if module.get("type", "").endswith(".Pooling"):
                try:
                    cfg = json.loads((path / module.get("path", "") / "config.json").read_text())
                except (OSError, ValueError):
                    break
                if cfg.get("pooling_mode_cls_token"):
                    pooling.mode = "cls"
                elif cfg.get("pooling_mode_max_tokens"):
                    pooling.mode = "max"
        return pooling

    def apply(self, hidden: Any, mask: Any) -> Any:
        """``(batch, seq, dim)`` states and ``(batch, seq)`` mask -> ``(batch, dim)`` float32 vectors."""
        import mlx.core as mx

        hidden = hidden.astype(mx.float32)
        m = mask.astype(mx.float32)[..., None]
        if self.mode == "cls":
            out = hidden[:, 0, :]
        elif self.mode == "max":
            out = mx.max(mx.where(m > 0, hidden, mx.array(-1e9, dtype=mx.float32)), axis=1)
        else:
            out = mx.sum(hidden * m, axis=1) / mx.maximum(mx.sum(m, axis=1), 1.0)
        if self.normalize:
            out = out / mx.maximum(mx.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
        return out


def _pad(batch: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import mlx.core as mx

    width = max(len(ids) for ids in batch)
    ids = [row + [pad_id] * (width - len(row)) for row in batch]
    mask = [[1] * len(row) + [0] * (width - len(row)) for row in batch]
    return mx.array(ids), mx.array(mask)


@dataclass
class EncoderEmbedder:
    """A sentence-transformers / BERT-family model loaded with mlx-embeddings."""

    name: str
    path: Path
    aliases: tuple[str, ...] = ()
    model: Any = None
    tokenizer: Any = None
    pooling: Pooling = field(default_factory=Pooling)
    dimensions: int = 0
    max_length: int = 512
    pad_id: int = 0

    @classmethod
    def load(cls, path: Path, *, name: str, aliases: tuple[str, ...] = ()) -> EncoderEmbedder:
        """Load the directory (call on the engine thread)."""
        from mlx_embeddings.utils import load

        model, tokenizer = load(str(path))
        config = json.loads((path / "config.json").read_text())
        hf = getattr(tokenizer, "_tokenizer", tokenizer)
        max_length = int(config.get("max_position_embeddings") or 512)
        try:
            max_length = min(max_length, int(json.loads((path / "sentence_bert_config.json").read_text())
                                             ["max_seq_length"]))
        except (OSError, ValueError, KeyError):
            pass
        return cls(name=name, path=path, aliases=aliases, model=model, tokenizer=hf,
                   pooling=Pooling.from_directory(path), dimensions=int(config.get("hidden_size") or 0),
                   max_length=max_length, pad_id=int(hf.pad_token_id or 0))

    def tokenize(self, text: str) -> list[int]:
        """Ids with the model's [CLS]/[SEP] (or equivalents)."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def embed_batch(self, batch: list[list[int]]) -> list[list[float]]:
        """Forward one padded batch and pool."""
        import mlx.core as mx

        ids, mask = _pad(batch, self.pad_id)
        out = self.model(ids, attention_mask=mask)
        vectors = self.pooling.apply(out.last_hidden_state, mask)
        mx.eval(vectors)
        return vectors.tolist()  # type: ignore[no-any-return]


@dataclass
class DecoderEmbedder:
    """Mean-pooled, L2-normalised final hidden states of an mlx-lm (decoder) model."""

    name: str
    model: Any
    tokenizer: Any
    max_length: int = 8192
    dimensions: int = 0
    pooling: Pooling = field(default_factory=Pooling)

    def __post_init__(self) -> None:
        if not self.dimensions:
            args = getattr(self.model, "args", None)
            self.dimensions = int(getattr(args, "hidden_size", 0) or 0)

    def tokenize(self, text: str) -> list[int]:
        """Ids as the tokenizer encodes plain text (BOS where the tokenizer adds one)."""
        from higgs_mlx.prompt import valid_unicode

        return list(self.tokenizer.encode(valid_unicode(text)))

    def embed_batch(self, batch: list[list[int]]) -> list[list[float]]:
        """Right-padded batch: causal attention keeps pads from touching real tokens; the mask drops them."""
        import mlx.core as mx

        ids, mask = _pad(batch, 0)
        hidden = self.model.model(ids)
        vectors = self.pooling.apply(hidden, mask)
        mx.eval(vectors)
        if not self.dimensions:
            self.dimensions = int(vectors.shape[-1])
        return vectors.tolist()  # type: ignore[no-any-return]


def _fit(vector: list[float], dimensions: int | None) -> list[float]:
    if dimensions is None or dimensions >= len(vector):
        return vector
    cut = vector[:dimensions]
    norm = sum(x * x for x in cut) ** 0.5
    return [x / norm for x in cut] if norm else cut


def embed_request(embedder: Embedder, request: EmbeddingRequest) -> EmbeddingResponse:
    """Embed every input of ``request`` (on the engine thread) and build the canonical response.

    Raises:
        InvalidRequestError: no input, too many inputs, an input over the model's length, an empty string,
            token ids outside the vocabulary, or more ``dimensions`` than the model has.
    """
    inputs: Sequence[str | list[int]] = request.input
    if not inputs:
        raise InvalidRequestError("'input' must not be empty.", param="input")
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequestError(f"At most {MAX_INPUTS} inputs per request, got {len(inputs)}.", param="input")
    if request.dimensions is not None and (request.dimensions < 1 or
                                           (embedder.dimensions and request.dimensions > embedder.dimensions)):
        raise InvalidRequestError(f"'dimensions' must be between 1 and {embedder.dimensions} for "
                                  f"'{embedder.name}', got {request.dimensions}.", param="dimensions")
    token_lists: list[list[int]] = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            if not item:
                raise InvalidRequestError(f"input[{i}] is an empty string.", param="input")
            ids = embedder.tokenize(item)
        else:
            ids = [int(t) for t in item]
            if not ids:
                raise InvalidRequestError(f"input[{i}] has no tokens.", param="input")
        if len(ids) > embedder.max_length:
            raise InvalidRequestError(f"input[{i}] is {len(ids)} tokens; '{embedder.name}' takes at most "
                                      f"{embedder.max_length}.", param="input", code="context_length_exceeded")
        token_lists.append(ids)
    vocab = _vocab_size(embedder)
    if vocab and any(t < 0 or t >= vocab for ids in token_lists for t in ids):
        raise InvalidRequestError(f"Token ids must be in [0, {vocab}) for '{embedder.name}'.", param="input")
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    vectors: list[list[float]] = [[] for _ in token_lists]
    batch: list[int] = []
    for index in order:
        width = len(token_lists[index])
        if batch and width * (len(batch) + 1) > BATCH_TOKENS:
            for i, vec in zip(batch, embedder.embed_batch([token_lists[i] for i in batch]), strict=True):
                vectors[i] = vec
            batch = []
        batch.append(index)
    if batch:
        for i, vec in zip(batch, embedder.embed_batch([token_lists[i] for i in batch]), strict=True):
            vectors[i] = vec
    data = [_fit(v, request.dimensions) for v in vectors]
    tokens = sum(len(ids) for ids in token_lists)
    return EmbeddingResponse(model=request.model, data=data, usage=Usage(input_tokens=tokens))


def _vocab_size(embedder: Embedder) -> int:
    tokenizer = getattr(embedder, "tokenizer", None)
    try:
        return len(tokenizer) if tokenizer is not None else 0
    except TypeError:
        return 0


_decoders: dict[int, DecoderEmbedder] = {}


def decoder_embedder(lm: Any) -> DecoderEmbedder:
    """The (cached) ``DecoderEmbedder`` of a loaded chat model (``higgs_mlx.loader.LoadedModel``)."""
    cached = _decoders.get(id(lm))
    if cached is None or cached.model is not lm.model:
        cached = DecoderEmbedder(name=lm.name, model=lm.model, tokenizer=lm.tokenizer,
                                 max_length=int(lm.context_length or 8192))
        _decoders[id(lm)] = cached
    return cached
