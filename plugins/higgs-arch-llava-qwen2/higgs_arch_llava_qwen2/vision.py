"""The LLaVA-Qwen2 vision adapter: how nanoLLaVA sees images (``ArchitectureSpec.vision``).

Preprocessing is mlx-vlm's own ``llava_bunny.ImageProcessor`` (RGB, bicubic resize to 384x384, scale to
[0, 1], normalize with mean/std 0.5, channels first). In the prompt each image is the text ``<image>\\n``
(mlx-vlm's ``IMAGE_TOKEN_NEWLINE`` message format); the rendered prompt is split at ``<image>``, the pieces are
tokenized separately and each image becomes one slot (``image_token_index``, -200) that 729 projected SigLIP
features replace, as in mlx-vlm's ``prepare_inputs`` + ``get_input_embeddings``. Unlike mlx-vlm, which
takes one image per prompt, any number of images is spliced in, in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np
from higgs_mlx.vision import VisionAdapter, splice_features

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["LlavaQwen2Vision"]


class LlavaQwen2Vision(VisionAdapter):
    """nanoLLaVA: SigLIP-so400m/14 at 384 px, 729 image tokens per image."""

    placeholder = "<image>\n"
    marker = "<image>"

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        from mlx_vlm.models.llava_bunny.llava_bunny import ImageProcessor

        super().__init__(path, config)
        self.processor = ImageProcessor()
        self.image_token_id = int(config.get("image_token_index", -200))
        vision = config.get("vision_config") or {}
        size = self.processor.size
        side = size[0] if isinstance(size, (tuple, list)) else int(vision.get("image_size", 384))
        self._per_image = (side // int(vision.get("patch_size", 14))) ** 2

    def tokens_per_image(self, image: Image | None = None) -> int:
        """729 for nanoLLaVA (a 27 x 27 patch grid), whatever the image's size."""
        return self._per_image

    def preprocess(self, images: list[Image]) -> Any:
        """``(n, 3, 384, 384)`` float32 pixel values."""
        preprocess: Any = self.processor.preprocess
        return np.stack(preprocess(images))

    def embed(self, model: Any, ids: list[int], pixels: Any) -> mx.array:
        """Token embeddings with each image slot replaced by that image's projected features."""
        features = model.encode_images(mx.array(pixels))
        embeds: mx.array = splice_features(model.embed_tokens, ids, features, self.image_token_id)
        return embeds
