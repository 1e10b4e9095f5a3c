"""Samplers and logits processors for one request, built on mlx-lm's sampling helpers.

Differences from ``mlx_lm.sample_utils.make_sampler``: every request owns its PRNG key (``seed`` makes one
request reproducible whatever else runs beside it), and the canonical ``Sampling`` record is the input.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from higgs.errors import InvalidRequestError
from higgs.messages import Sampling

Sampler = Callable[[Any], Any]
LogitsProcessor = Callable[[Any, Any], Any]

#: How many recent tokens the repetition/presence/frequency penalties look at (mlx-lm's default is 20;
#: OpenAI's penalties consider the whole output, so we look further back).
PENALTY_CONTEXT = 256


def validate(sampling: Sampling, vocab_size: int) -> None:
    """Reject parameters that are out of range with a 400 that names the field."""
    s = sampling
    for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        value = getattr(s, name)
        if value is not None and not math.isfinite(value):  # NaN, or a literal like 1e400 that overflows
            raise InvalidRequestError(f"{name} must be a finite number, not {value}", param=name)
    if s.temperature is not None and s.temperature < 0:
        raise InvalidRequestError("temperature must be >= 0", param="temperature")
    if s.top_p is not None and not 0 <= s.top_p <= 1:
        raise InvalidRequestError("top_p must be between 0 and 1", param="top_p")
    if s.min_p is not None and not 0 <= s.min_p <= 1:
        raise InvalidRequestError("min_p must be between 0 and 1", param="min_p")
    if s.top_k is not None and s.top_k < 0:
        raise InvalidRequestError("top_k must be >= 0", param="top_k")
    if s.repetition_penalty is not None and s.repetition_penalty <= 0:
        raise InvalidRequestError("repetition_penalty must be > 0", param="repetition_penalty")
    for token, bias in (s.logit_bias or {}).items():
        if not 0 <= int(token) < vocab_size:
            raise InvalidRequestError(f"logit_bias token id {token} is outside the vocabulary (0..{vocab_size - 1})",
                                      param="logit_bias")
        if not math.isfinite(bias):
            raise InvalidRequestError(f"logit_bias for token {token} must be a finite number", param="logit_bias")


class RequestSampler:
    """Temperature / top-p / top-k / min-p sampling with a private PRNG key (greedy at temperature 0)."""

    def __init__(self, sampling: Sampling, default_temperature: float = 1.0) -> None:
        import mlx.core as mx
        from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

        temp = default_temperature if sampling.temperature is None else sampling.temperature
        self.greedy = temp == 0
        self.temperature = temp
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(63)
        self._key = mx.random.key(seed % (2**63))
        methods: list[Callable[[Any], Any]] = []
        top_p, min_p, top_k = sampling.top_p or 0.0, sampling.min_p or 0.0, sampling.top_k or 0
        if 0 < top_p < 1.0:
            methods.append(lambda x: apply_top_p(x, top_p))
        if min_p > 0:
            methods.append(lambda x: apply_min_p(x, min_p, 1))
        if top_k > 0:
            methods.append(lambda x: apply_top_k(x, top_k))
        self._methods = methods

    def __call__(self, logprobs: Any) -> Any:
        """One token id (an ``mx.array`` of shape ``(1,)``) from a row of log-probabilities."""
        import mlx.core as mx

        if self.greedy:
            return mx.argmax(logprobs, axis=-1)
        for method in self._methods:
            logprobs = method(logprobs)
        self._key, sub = mx.random.split(self._key)
        return mx.random.categorical(logprobs * (1 / self.temperature), key=sub)


def make_processors(sampling: Sampling) -> list[LogitsProcessor]:
    """Logit bias and the three penalties, as mlx-lm logits processors ``(tokens, logits) -> logits``."""
    from mlx_lm.sample_utils import make_logits_processors

    bias = {int(k): float(v) for k, v in (sampling.logit_bias or {}).items()} or None
    return list(make_logits_processors(
        logit_bias=bias,
        repetition_penalty=sampling.repetition_penalty,
        repetition_context_size=PENALTY_CONTEXT,
        presence_penalty=sampling.presence_penalty,
        presence_context_size=PENALTY_CONTEXT,
        frequency_penalty=sampling.frequency_penalty,
        frequency_context_size=PENALTY_CONTEXT,
    ))
