"""Vision models in the local engine: the ``VisionAdapter`` contract and the image path of a chat request.

A vision family's architecture plugin sets ``ArchitectureSpec.vision`` to ``"pkg.module:Class"``, a
subclass of ``VisionAdapter`` built once per loaded model (``LoadedModel.vision``). The engine knows
nothing family-specific; the adapter supplies:

- ``placeholder``: the text an image block becomes inside a chat message (``"<image>\\n"`` for LLaVA);
- ``marker``: the string the rendered prompt is split on, one per image (``"<image>"``);
- ``preprocess(images)``: Pillow images -> pixel arrays (runs in a worker thread);
- ``embed(model, ids, pixels)``: on the engine thread, the prompt's input embeddings, image features
  spliced in where ``ids`` holds ``image_token_id``.

The request path (``prepare_chat``): collect and load the images (``higgs_mlx.images``), render the chat
template with placeholders, split the prompt at the markers and tokenize the pieces, run ``embed`` on the
engine thread, and hand the engine a ``Job`` whose ``embeds`` replace the token embeddings during prefill.
A text-only request to a vision model takes the ordinary text path.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from higgs.errors import InvalidRequestError
from higgs.messages import ChatRequest

from higgs_mlx.images import ImageSettings, collect_images, load_images
from higgs_mlx.loader import LoadedModel, ModelLoadError

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["VisionAdapter", "VisionPrompt", "count_tokens", "has_images", "load_adapter", "prepare_chat",
           "splice_features"]


class VisionAdapter:
    """What the engine needs from an image + text model family (subclass per family).

    The default methods fit LLaVA-style models: each image is one slot in the prompt's token ids
    (``image_token_id``) that ``embed`` replaces with ``tokens_per_image`` feature vectors, and the text
    between images is tokenized piece by piece, as the reference processors do.

    Args:
        path: the model directory.
        config: its ``config.json``.
    """

    #: The text an image block becomes inside a chat message.
    placeholder: str = "<image>\n"
    #: Where the rendered prompt is split, once per image.
    marker: str = "<image>"
    #: Token id marking an image slot in the ids handed to ``embed`` (need not be in the vocabulary).
    image_token_id: int = -200

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path = path
        self.config = config

    def tokens_per_image(self, image: Image | None = None) -> int:
        """How many prompt positions ``image`` takes once embedded (None: a typical image, for counting)."""
        raise NotImplementedError

    def preprocess(self, images: list[Image]) -> Any:
        """Pixel values for ``images`` (a numpy array, batch first); runs in a worker thread."""
        raise NotImplementedError

    def encode_prompt(self, text: str, tokenizer: Any) -> list[int]:
        """Token ids of the rendered prompt with one ``image_token_id`` per ``marker``."""
        pieces = text.split(self.marker)
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if i:
                ids.append(self.image_token_id)
            if piece:
                ids.extend(int(t) for t in tokenizer(_valid_unicode(piece))["input_ids"])
        return ids

    def embed(self, model: Any, ids: list[int], pixels: Any) -> Any:
        """Input embeddings ``(1, L, hidden)`` of the prompt, images spliced in (engine thread)."""
        raise NotImplementedError


def _valid_unicode(text: str) -> str:
    """Lone surrogates (legal in JSON, not in UTF-8) become U+FFFD instead of a tokenizer error."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def load_adapter(target: str, path: Path, config: dict[str, Any]) -> VisionAdapter:
    """Import ``"pkg.module:Class"`` and build the adapter for a model directory."""
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr or "VisionAdapter")
    except (ImportError, AttributeError) as err:
        raise ModelLoadError(f"The vision adapter {target} of {path} cannot be imported: {err}") from err
    adapter = cls(path, config)
    if not isinstance(adapter, VisionAdapter):
        raise ModelLoadError(f"{target} is not a higgs_mlx.vision.VisionAdapter")
    return adapter


def has_images(request: ChatRequest) -> bool:
    """Whether any message (or tool result) of the request carries an image."""
    return bool(collect_images(request))


class VisionPrompt:
    """A rendered vision prompt: text, expanded ids (image slots filled) and the embeddings to prefill."""

    def __init__(self, text: str, ids: list[int], embeds: Any) -> None:
        self.text = text
        self.ids = ids
        self.embeds = embeds


async def prepare_chat(provider: Any, request: ChatRequest) -> tuple[LoadedModel, VisionPrompt]:
    """Load the request's images, render and tokenize the prompt, and embed it on the engine thread.

    Raises:
        InvalidRequestError: the model is text-only, an image is broken, or the prompt text itself
            contains the model's image marker.
    """
    from higgs_mlx import prompt as prompts

    lm: LoadedModel = provider.model(request.model)
    adapter: VisionAdapter | None = getattr(lm, "vision", None)
    if adapter is None:
        raise prompts.image_error(lm)
    settings = ImageSettings.from_settings(provider.settings)
    refs = collect_images(request)
    images = await load_images(refs, settings)

    def tokenize() -> tuple[str, list[int], list[int], Any]:
        _, text, _ = provider._prepare_chat(request)
        if text.count(adapter.marker) != len(images):
            raise InvalidRequestError(
                f"The conversation text contains '{adapter.marker}', which '{lm.name}' reserves for images; "
                "remove it from the text.", param="messages", code="invalid_image")
        slots = adapter.encode_prompt(text, lm.tokenizer._tokenizer)
        vocab = int(lm.config.get("vocab_size") or len(lm.tokenizer._tokenizer))
        fills = iter(images)
        ids: list[int] = []
        for token in slots:
            if token == adapter.image_token_id:
                image = next(fills)
                ids.extend(image_fill_ids(image, adapter.tokens_per_image(image), vocab))
            else:
                ids.append(token)
        return text, slots, ids, adapter.preprocess(images)

    text, slots, ids, pixels = await asyncio.to_thread(tokenize)
    future = provider.engine.call(functools.partial(_embed, adapter, lm, slots, pixels))
    embeds = await asyncio.wrap_future(future)
    if len(ids) != int(embeds.shape[1]):
        raise RuntimeError(f"vision adapter returned {embeds.shape[1]} embeddings for {len(ids)} positions")
    return lm, VisionPrompt(text, ids, embeds)


def count_tokens(provider: Any, request: ChatRequest) -> int:
    """The prompt length of an image request without fetching the images: the text's tokens plus
    ``tokens_per_image()`` positions per image (exact for fixed-size families such as LLaVA-Qwen2)."""
    lm, text, ids = provider._prepare_chat(request)
    adapter: VisionAdapter | None = getattr(lm, "vision", None)
    if adapter is None:
        return len(ids)
    slots = adapter.encode_prompt(text, lm.tokenizer._tokenizer)
    images = sum(1 for token in slots if token == adapter.image_token_id)
    return len(slots) - images + images * adapter.tokens_per_image()


def _embed(adapter: VisionAdapter, lm: LoadedModel, slots: list[int], pixels: Any) -> Any:
    """The prompt's embeddings as a lazy graph: the first prefill chunk evaluates the vision tower with
    it (one sync instead of two; the evaluated embeddings then serve the later chunks)."""
    return adapter.embed(lm.model, slots, pixels)


def image_fill_ids(image: Image, count: int, vocab_size: int) -> list[int]:
    """The token ids that stand for an image's positions in ``Job.prompt``: derived from a hash of its
    pixels, so a prefix cache keyed on token ids hits only when the same image sits at the same place
    (whose KV-cache is then truly the same) and never confuses two images."""
    import hashlib
    import random

    digest = hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).digest()
    rng = random.Random(digest)
    return [rng.randrange(vocab_size) for _ in range(count)]


def splice_features(embed_tokens: Any, ids: list[int], features: Any, image_token_id: int) -> Any:
    """``(1, L, hidden)`` embeddings: the text tokens' own, and each ``image_token_id`` slot replaced by the
    next image's ``features[i]`` (``(n_images, tokens_per_image, hidden)``), in order.

    Segments are concatenated the way mlx-vlm's LLaVA models do, so the dtypes (and the numbers) match.
    """
    import mlx.core as mx

    slots = [i for i, token in enumerate(ids) if token == image_token_id]
    if len(slots) != int(features.shape[0]):
        raise ValueError(f"{len(slots)} image slots for {features.shape[0]} images")
    text = embed_tokens(mx.array([0 if t == image_token_id else t for t in ids])[None])
    parts = []
    start = 0
    for image, slot in enumerate(slots):
        parts.append(text[:, start:slot])
        parts.append(features[image : image + 1])
        start = slot + 1
    parts.append(text[:, start:])
    return mx.concatenate(parts, axis=1)
