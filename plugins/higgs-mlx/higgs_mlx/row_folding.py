"""Quantized projections see a batch of decoding rows as one matrix, not as a stack of one-row matrices.

Why: a batched decode step feeds every layer ``(B, 1, hidden)``. MLX's ``quantized_matmul`` treats the
leading ``B`` as a batch of separate ``1 x hidden`` products against the same weights, and on CUDA (sm90)
anything but a single row runs the tiled GEMM kernel once per batch entry: ``B`` one-row GEMMs per
projection, and a large tied ``lm_head`` read from memory ``B`` times per step. Folding the leading
dimensions into the rows of one ``(B, hidden)`` product gives the same numbers in one GEMM.

How: the loaded model's ``QuantizedLinear`` and ``QuantizedEmbedding`` layers take subclasses whose
``__call__`` / ``as_linear`` reshape around the product (a free reshape of a contiguous input). The weights,
their names and the layers' other behaviour stay as mlx-lm made them. One row and 2-D inputs are unchanged.
"""

from __future__ import annotations

from functools import cache
from typing import Any


def _folded(product: Any, x: Any) -> Any:
    if x.ndim <= 2:
        return product(x)
    shape = x.shape
    out = product(x.reshape(-1, shape[-1]))
    return out.reshape(*shape[:-1], out.shape[-1])


@cache
def _subclasses() -> dict[type, type]:
    """mlx's quantized layer classes -> their folding subclasses (made once; mlx imported on first use)."""
    import mlx.nn

    nn: Any = mlx.nn  # (mlx's stubs lack the quantized layers)

    class RowFoldedQuantizedLinear(nn.QuantizedLinear):  # type: ignore[misc]
        def __call__(self, x: Any) -> Any:
            return _folded(super().__call__, x)

    class RowFoldedQuantizedEmbedding(nn.QuantizedEmbedding):  # type: ignore[misc]
        def as_linear(self, x: Any) -> Any:
            return _folded(super().as_linear, x)

    return {nn.QuantizedLinear: RowFoldedQuantizedLinear, nn.QuantizedEmbedding: RowFoldedQuantizedEmbedding}


def fold_quantized_rows(model: Any) -> int:
    """Give ``model``'s quantized projections the folding subclasses; returns the number of layers changed."""
    changed = 0
    for layer in model.modules():
        replacement = _subclasses().get(type(layer))
        if replacement is not None:
            layer.__class__ = replacement
            changed += 1
    return changed
