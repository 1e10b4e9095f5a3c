"""mlx-lm's ``Model``/``ModelArgs`` contract over mlx-vlm's LLaVA-Qwen2 (``llava_bunny``) model classes.

The local engine loads every family through ``mlx_lm.utils.load_model(get_model_classes=...)`` and calls
``model(tokens[None], cache=cache)``. This module lets it do the same for nanoLLaVA without a model of its
own: ``Model`` *is* mlx-vlm's ``llava_bunny.Model`` (SigLIP tower, 2-layer GELU projector, Qwen2 language
model, weight names and ``sanitize`` unchanged), plus

- ``__call__(inputs, cache=None, input_embeddings=None)`` returning logits, as mlx-lm models do, running the
  language model alone (decode steps, text-only prompts, and vision prompts once embedded);
- ``encode_images(pixel_values)``: image features ``(n_images, 729, hidden)`` exactly as mlx-vlm's
  ``get_input_embeddings`` computes them;
- ``sanitize`` chaining the three sanitizers mlx-vlm's loader runs (model, vision tower, language model).
"""

from __future__ import annotations

import copy
from typing import Any

import mlx.core as mx
from mlx_vlm.models.llava_bunny import config as _config
from mlx_vlm.models.llava_bunny import llava_bunny as _llava

__all__ = ["Model", "ModelArgs"]


class ModelArgs:
    """Builds mlx-vlm's ``ModelConfig`` (with typed text and vision configs) from ``config.json``."""

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> _config.ModelConfig:
        """The config object ``llava_bunny.Model`` takes, built the way mlx-vlm's loader builds it."""
        params = copy.deepcopy(params)
        params.setdefault("vision_config", {})
        build: Any = _config.ModelConfig.from_dict
        config: _config.ModelConfig = build(params)
        text: Any = _config.TextConfig.from_dict
        vision: Any = _config.VisionConfig.from_dict
        config.text_config = text(config.text_config)
        config.vision_config = vision(config.vision_config)
        return config


class Model(_llava.Model):
    """mlx-vlm's LLaVA-Qwen2 model with mlx-lm's calling convention."""

    def __call__(  # type: ignore[override]  # mlx-lm's calling convention, on purpose
        self, inputs: mx.array, cache: Any = None, input_embeddings: mx.array | None = None, **kwargs: Any
    ) -> mx.array:
        """Logits for ``inputs`` (or for ``input_embeddings``, which replace the token embeddings)."""
        logits: mx.array = self.language_model(inputs, inputs_embeds=input_embeddings, cache=cache).logits
        return logits

    def encode_images(self, pixel_values: mx.array) -> mx.array:
        """Projected image features ``(n_images, patches, hidden)`` for channel-first pixel values."""
        *_, hidden_states = self.vision_tower(pixel_values.transpose(0, 2, 3, 1), output_hidden_states=True)
        features = hidden_states[-1].astype(pixel_values.dtype)
        projected: mx.array = self.mm_projector(features)
        return projected

    def embed_tokens(self, ids: mx.array) -> mx.array:
        """Token embeddings of ``ids`` (batch first)."""
        embedded: mx.array = self.language_model.model.embed_tokens(ids)
        return embedded

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """HF / mlx-community names -> this model's, as mlx-vlm's loader does."""
        steps: list[Any] = [super().sanitize, self.vision_tower.vision_tower.sanitize, self.language_model.sanitize]
        for step in steps:
            weights = step(weights)
        return dict(weights)
