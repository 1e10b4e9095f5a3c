"""Compiled decode steps: one ``mx.compile``-d function per model runs a whole batched decode step.

Why: on a GPU a decode step of a small model is bound by host work, not by the device. mlx-lm's eager step
rebuilds the model's graph in Python for every token (about 0.8 ms for a 16-layer 1B model on an H100
host) and MLX then encodes each of its few hundred small kernels. A compiled step is traced once per input
shape; later calls replay the traced graph from C++, with elementwise chains fused into single kernels.

What it needs: a graph whose shapes do not change from token to token. mlx-lm's ``KVCache`` returns
``keys[..., :offset, :]``, a new shape at every step, so the compiled step keeps its own cache instead
(``StaticBatchCache``): per layer, fixed-capacity buffers ``(B, heads, capacity, dim)`` with every row's
positions right-aligned at a shared write index, a per-row left padding, and a mask over the whole
capacity. The write index and the padding are arrays, so the trace is reused until the capacity grows
(in steps, ``capacity()``) or the number of rows changes.

Which models: those whose every cache layer is a plain ``KVCache`` and whose attention takes mlx-lm's
cache protocol (``offset`` for RoPE, ``update_and_fetch``, ``make_mask``). ``check()`` runs a few steps of
both ways on the loaded model at start-up and keeps the compiled step only when it traces and reproduces
the eager step's tokens; otherwise (sliding windows, SSM layers, a model that reads ``cache.offset`` as a
Python number) the engine decodes eagerly, and the reason is logged once.

mlx is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Buffer positions are allocated in multiples of this (and of an eighth of the length beyond 512 tokens).
#: The attention reads every position of the buffers (masked), so the slack is kept small: on CUDA a masked
#: attention is MLX's unfused fallback, whose cost grows with the positions it is given.
CAPACITY_STEP = 64
#: Free positions made when a cache is (re)built or full: at least one, rounded up by ``capacity()``; the
#: step is traced again (once per shape) each time the buffers grow.
HEADROOM = 1

#: Row slots are allocated up to this many at a time beyond the powers of two (``slots()``).
SLOT_STEP = 8

#: One row's KV: per layer, ``(keys, values)`` of shape ``(1, heads, length, dim)``.
RowKV = list[tuple[Any, Any]]


@dataclass
class RowBlock:
    """The KV of ``n`` rows that share one length axis: per layer, ``(keys, values)`` of shape
    ``(n, heads, length, dim)``, row ``r`` valid at ``[left[r], length)`` (right-aligned, as mlx-lm's
    ``BatchKVCache`` holds them). Rows prefilled together join the buffers as one block: a copy per layer,
    not one per row."""

    kv: RowKV
    left: list[int]

    @property
    def length(self) -> int:
        return int(self.kv[0][0].shape[2])

    @classmethod
    def of_row(cls, row: RowKV) -> RowBlock:
        return cls(row, [0])

    @classmethod
    def of_batch_cache(cls, cache: Sequence[Any], keep: list[int] | None = None) -> RowBlock:
        """The rows of mlx-lm ``BatchKVCache`` layers (``keep``: only these rows, in this order)."""
        import mlx.core as mx

        *_, padding, end = cache[0].state  # keys, values, offsets, left padding, positions used
        left: list[int] = padding.tolist()
        index = None if keep is None or keep == list(range(len(left))) else mx.array(keep)
        kv = []
        for c in cache:
            k, v = c.keys[..., :end, :], c.values[..., :end, :]
            kv.append((k, v) if index is None else (k[index], v[index]))
        return cls(kv, left if keep is None else [left[i] for i in keep])


def capacity(n: int) -> int:
    """Buffer positions for ``n`` tokens: a multiple of 64, coarser for long contexts (at most 1/8 wasted),
    so the number of distinct shapes (and traces) stays small."""
    step = max(CAPACITY_STEP, (1 << max(0, n.bit_length() - 1)) // 8)
    return max(step, -(-n // step) * step)


def slots(rows: int) -> int:
    """Rows of the buffers (and of the traced step) for ``rows`` decoding rows: the next power of two up to
    ``SLOT_STEP``, then the next multiple of it. Rows join and leave one by one as requests arrive and
    finish; without slots every row count met is a new shape, traced (and its kernels built) while other
    requests wait. Spare slots repeat the first row and their outputs are ignored; with the rows of a
    projection folded into one product (``row_folding``), a few more rows cost little."""
    if rows <= SLOT_STEP:
        return 1 << max(0, rows - 1).bit_length()
    return -(-rows // SLOT_STEP) * SLOT_STEP


def _with_spares(items: list[Any]) -> list[Any]:
    """``items`` (one per row) followed by the spare slots' entries: the first row's, repeated."""
    return items + items[:1] * (slots(len(items)) - len(items))


class _LayerView:
    """mlx-lm's cache protocol for one attention layer inside the compiled step."""

    def __init__(self, keys: Any, values: Any, start: Any, left: Any, offset: Any, mask: Any,
                 kernel: bool) -> None:
        self.keys, self.values = keys, values
        self.offset = offset  # (B,) positions of the new token, for RoPE
        self.start = start  # (1,) the write index
        self.left = left  # (B,) each row's first valid position
        self.kernel = kernel  # attend with ``decode_attention`` where it takes the shapes
        self.kernel_used = False  # set (while tracing) when it did
        self._mask = mask

    def update_and_fetch(self, keys: Any, values: Any) -> tuple[Any, Any]:
        import mlx.core as mx

        self.keys = mx.slice_update(self.keys, keys, self.start, axes=(2,))
        self.values = mx.slice_update(self.values, values, self.start, axes=(2,))
        return self.keys, self.values

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None) -> Any:
        if n != 1 or window_size is not None:
            raise NotImplementedError("compiled decode steps take one token per row and no sliding window")
        return self._mask


class StaticBatchCache:
    """The KV of ``B`` decoding rows in fixed-capacity buffers of ``slots(B)`` rows.

    Row ``r`` holds its positions at ``[left[r], write)`` of every layer's buffers; the next token of every
    row is written at ``write``. The spare slots after the ``B`` rows repeat row 0 (so they attend to valid
    positions); the step computes them and nothing reads them. Attributes are plain Python values except
    the buffers.
    """

    def __init__(self, keys: list[Any], values: list[Any], write: int, left: list[int]) -> None:
        self.keys = keys
        self.values = values
        self.write = write
        self.left = left
        self._left_array: Any = None

    def left_array(self) -> Any:
        """``left`` as an ``int32`` array (made once per change of the rows)."""
        import mlx.core as mx

        if self._left_array is None:
            self._left_array = mx.array(_with_spares(self.left), dtype=mx.int32)
        return self._left_array

    @property
    def slots(self) -> int:
        """Rows of the buffers: ``len(self)`` rows, then spare slots."""
        return int(self.keys[0].shape[0])

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[2])

    @property
    def nbytes(self) -> int:
        return sum(int(k.nbytes) + int(v.nbytes) for k, v in zip(self.keys, self.values, strict=True))

    def __len__(self) -> int:
        return len(self.left)

    @classmethod
    def from_rows(cls, rows: Sequence[RowKV], headroom: int | None = None) -> StaticBatchCache:
        """Right-align each row's KV at a common write index in new buffers."""
        return cls.from_blocks([RowBlock.of_row(row) for row in rows], headroom)

    @classmethod
    def from_blocks(cls, blocks: Sequence[RowBlock], headroom: int | None = None) -> StaticBatchCache:
        """Right-align the blocks' rows at a common write index in new buffers."""
        headroom = HEADROOM if headroom is None else headroom
        write = max(block.length for block in blocks)
        cap = capacity(write + headroom)
        rows = sum(len(block.left) for block in blocks)
        keys: list[Any] = []
        values: list[Any] = []
        for layer in range(len(blocks[0].kv)):
            for out, which in ((keys, 0), (values, 1)):
                parts = [_placed(block.kv[layer][which], write, cap) for block in blocks]
                parts += [parts[0][:1]] * (slots(rows) - rows)
                out.append(_stacked(parts))
        left = [pad + write - block.length for block in blocks for pad in block.left]
        return cls(keys, values, write, left)

    def add_rows(self, new: Sequence[RowKV]) -> None:
        """``add_blocks`` of one-row blocks."""
        self.add_blocks([RowBlock.of_row(row) for row in new])

    def add_blocks(self, new: Sequence[RowBlock]) -> None:
        """Append rows to the buffers, right-aligned at the write index, in ``slots()`` of the new count.

        Only the new rows are copied in, a block (rows prefilled together) with one copy per layer. A new
        row longer than the write index moves it: the rows already there shift right by the difference
        (padded on the left, the same number of free positions dropped on the right) while the buffers have
        room for it, else the buffers are rebuilt (``from_blocks``). Rebuilding at every join cost the engine
        thread 14 ms of host time for one row joining 15 (a 28-layer model's buffers, CPU host) and 23 ms at
        32 rows, against about 1 ms for this; every running row waits for it."""
        import mlx.core as mx

        write = max([self.write, *(block.length for block in new)])
        cap = self.capacity
        count = len(self.left)
        if write + HEADROOM > cap:
            running = RowBlock([(k[:count, :, : self.write], v[:count, :, : self.write])
                                for k, v in zip(self.keys, self.values, strict=True)], list(self.left))
            rebuilt = StaticBatchCache.from_blocks([running, *new])
            self.keys, self.values, self.write, self.left = rebuilt.keys, rebuilt.values, rebuilt.write, rebuilt.left
            self._left_array = None
            return
        shift = write - self.write
        rows = count + sum(len(block.left) for block in new)
        buffers: tuple[list[Any], list[Any]] = ([], [])
        for layer in range(len(self.keys)):
            for which, old in enumerate((self.keys[layer], self.values[layer])):
                _, heads, _, dim = old.shape
                kept = old[:count]
                if shift:  # positions from cap - shift on are free (at or beyond the old write index)
                    kept = mx.concatenate([mx.zeros((count, heads, shift, dim), old.dtype),
                                           kept[:, :, : cap - shift]], axis=2)
                parts = [kept, *(_placed(block.kv[layer][which], write, cap) for block in new)]
                parts += [kept[:1]] * (slots(rows) - rows)
                buffers[which].append(_stacked(parts))
        self.keys, self.values = buffers
        self.left = [pad + shift for pad in self.left] + [pad + write - block.length for block in new
                                                           for pad in block.left]
        self.write = write
        self._left_array = None

    def rows(self) -> list[RowKV]:
        """Each row's KV (its valid positions only)."""
        return [[(k[r : r + 1, :, pad : self.write, :], v[r : r + 1, :, pad : self.write, :])
                 for k, v in zip(self.keys, self.values, strict=True)]
                for r, pad in enumerate(self.left)]

    def filter(self, keep: list[int]) -> None:
        """Keep only the rows ``keep`` (in that order), in ``slots(len(keep))`` slots."""
        import mlx.core as mx

        index = mx.array(_with_spares(keep))
        self.keys = [k[index] for k in self.keys]
        self.values = [v[index] for v in self.values]
        self.left = [self.left[i] for i in keep]
        self._left_array = None

    def ensure_room(self) -> None:
        """Grow the buffers when the next write would not fit (a new shape: the step is traced again)."""
        import mlx.core as mx

        if self.write < self.capacity:
            return
        cap = capacity(self.write + HEADROOM)
        grow = cap - self.capacity

        def wider(x: Any) -> Any:
            b, h, _, d = x.shape
            return mx.concatenate([x, mx.zeros((b, h, grow, d), x.dtype)], axis=2)

        self.keys = [wider(k) for k in self.keys]
        self.values = [wider(v) for v in self.values]


def _placed(x: Any, write: int, cap: int) -> Any:
    """``x`` ``(n, heads, length, dim)`` right-aligned at ``write`` in ``cap`` positions (zeros around)."""
    import mlx.core as mx

    n, heads, length, dim = x.shape
    pieces = [x, mx.zeros((n, heads, cap - write, dim), x.dtype)]
    if write > length:
        pieces.insert(0, mx.zeros((n, heads, write - length, dim), x.dtype))
    return mx.concatenate(pieces, axis=2)


def _stacked(parts: list[Any]) -> Any:
    import mlx.core as mx

    return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=0)


def rows_from_kv_caches(caches: Sequence[Any]) -> RowKV:
    """One row's KV from a list of plain ``KVCache`` layers."""
    return [(c.keys[..., : c.offset, :], c.values[..., : c.offset, :]) for c in caches]


_base_attention: Any = None


def _attention(queries: Any, keys: Any, values: Any, cache: Any, scale: float, mask: Any,
               sinks: Any = None) -> Any:
    """mlx-lm's ``scaled_dot_product_attention``, with the fused decode kernel for a compiled step's layers."""
    from higgs_mlx import decode_attention

    if (isinstance(cache, _LayerView) and cache.kernel and sinks is None
            and decode_attention.supports(queries, keys, values)):
        cache.kernel_used = True
        return decode_attention.attention(queries, keys, values, cache.left, cache.start, scale)
    return _base_attention(queries, keys, values, cache, scale=scale, mask=mask, sinks=sinks)


def install_attention(model: Any) -> None:
    """Route the attention of ``model``'s mlx-lm modules through ``_attention`` (a pass-through for any
    cache but a compiled step's): mlx-lm's models call the ``scaled_dot_product_attention`` they imported
    from ``mlx_lm.models.base``, so the name is replaced in those modules."""
    import sys

    from mlx_lm.models import base

    global _base_attention
    _base_attention = _base_attention or base.scaled_dot_product_attention
    for layer in model.modules():
        namespace = sys.modules.get(type(layer).__module__)
        if getattr(namespace, "scaled_dot_product_attention", None) is _base_attention:
            namespace.scaled_dot_product_attention = _attention  # type: ignore[union-attr]


class CompiledDecoder:
    """The compiled decode step of one model (``mode`` picks what it returns; each is its own trace).

    ``attention_kernel``: attend with ``decode_attention``'s fused kernel (CUDA) instead of MLX's masked
    attention."""

    def __init__(self, model: Any, attention_kernel: bool = False) -> None:
        import mlx.core as mx

        self.model = model
        self.attention_kernel = attention_kernel
        #: Layers that attended with the kernel in the last trace.
        self.kernel_layers = 0
        #: ``(mode, slots, capacity)`` shapes traced so far, and the host seconds their first calls took
        #: (the trace; the kernels are built later, when the step is first evaluated).
        self.shapes: set[tuple[str, int, int]] = set()
        self.trace_seconds = 0.0
        if attention_kernel:
            install_attention(model)
        self._steps = {mode: mx.compile(self._make_step(mode)) for mode in ("greedy", "logits")}

    def _make_step(self, mode: str) -> Any:
        import mlx.core as mx

        def step(tokens: Any, write: Any, left: Any, *buffers: Any) -> tuple[Any, ...]:
            half = len(buffers) // 2
            positions = mx.arange(buffers[0].shape[2])
            mask = ((positions[None] >= left[:, None]) & (positions[None] <= write))[:, None, None, :]
            offset = write - left
            start = write.reshape(1)
            views = [_LayerView(buffers[i], buffers[half + i], start, left, offset, mask, self.attention_kernel)
                     for i in range(half)]
            logits = self.model(tokens[:, None], cache=views)[:, -1, :]
            self.kernel_layers = sum(v.kernel_used for v in views)
            if mode == "greedy":  # the same arithmetic as the eager path (and mlx-lm's generate_step)
                logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
                head: tuple[Any, ...] = (mx.argmax(logprobs, axis=-1), logprobs)
            else:
                head = (logits,)
            return head + tuple(v.keys for v in views) + tuple(v.values for v in views)

        return step

    def __call__(self, cache: StaticBatchCache, tokens: Any, mode: str) -> tuple[Any, ...]:
        """Run one step on ``tokens`` (``(B,)``, or one per slot): the cache's buffers are replaced by the
        step's outputs and its write index advances. Returns ``(next tokens, logprobs)`` for ``greedy``,
        ``(logits,)`` else, with one row per slot (the first ``B`` are the rows)."""
        import mlx.core as mx

        cache.ensure_room()
        spare = cache.slots - int(tokens.shape[0])
        if spare:
            tokens = mx.concatenate([tokens, mx.zeros((spare,), tokens.dtype)])
        n = len(cache.keys)
        shape = (mode, cache.slots, cache.capacity)
        started = time.perf_counter() if shape not in self.shapes else None
        out = self._steps[mode](tokens, mx.array(cache.write, dtype=mx.int32), cache.left_array(),
                                *cache.keys, *cache.values)
        if started is not None:
            self.shapes.add(shape)
            self.trace_seconds += time.perf_counter() - started
        head = len(out) - 2 * n
        cache.keys, cache.values = list(out[head : head + n]), list(out[head + n :])
        cache.write += 1
        return tuple(out[:head])


def supported(model: Any) -> str | None:
    """Why ``model`` cannot use compiled decode steps (None when its cache layers allow it)."""
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    cache = make_prompt_cache(model)
    kinds = sorted({type(c).__name__ for c in cache if type(c) is not KVCache})
    if not cache or kinds:
        return f"its cache layers ({', '.join(kinds) or 'none'}) are not plain KVCache"
    return None


#: Largest difference allowed between a batched (or compiled) step's log-probabilities and the solo eager
#: step's, as a fraction of the solo row's spread (max - min). Rounding of batched or fused kernels stays
#: far below it (0 on the CPU, a few thousandths in bfloat16); a mask or position on the wrong axis does not
#: (gemma2's batch mask: a quarter of the spread).
TOLERANCE = 0.02


@dataclass
class Reference:
    """Prompts decoded one by one with mlx-lm's own cache and eager steps (the checks' reference)."""

    rows: list[RowKV]  # each prompt's KV right after its prefill (copies)
    inputs: list[Any]  # per step, the ``(B,)`` tokens fed (the solo greedy tokens)
    logprobs: list[Any]  # per step, the ``(B, vocab)`` log-probabilities the solo runs computed

    def mismatch(self, step: Callable[[Any], Any], what: str) -> str | None:
        """Feed ``step`` the reference's tokens (``(B,)`` -> ``(B, vocab)`` log-probabilities); None when
        every step agrees with the solo runs within ``TOLERANCE``, else a description of the worst step."""
        import mlx.core as mx

        for n, (tokens, want) in enumerate(zip(self.inputs, self.logprobs, strict=True)):
            got = step(tokens)[: want.shape[0]].astype(mx.float32)
            want = want.astype(mx.float32)
            error = mx.abs(got - want).max(axis=-1)
            spread = want.max(axis=-1) - want.min(axis=-1)
            bad: list[bool] = (error > TOLERANCE * spread + 1e-4).tolist()
            if any(bad):
                row = bad.index(True)
                return (f"{what} log-probabilities differ from one-row decoding by {error[row].item():.3g} "
                        f"(spread {spread[row].item():.3g}) at step {n + 1}, row {row + 1}")
        return None


def solo_reference(model: Any, prompts: Sequence[list[int]], steps: int) -> Reference:
    """Decode each prompt greedily on its own for ``steps`` tokens (mlx-lm's ``KVCache``, eager steps)."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    rows: list[RowKV] = []
    inputs: list[list[Any]] = [[] for _ in range(steps)]
    logprobs: list[list[Any]] = [[] for _ in range(steps)]
    for prompt in prompts:
        cache = make_prompt_cache(model)
        logits = model(mx.array(prompt)[None], cache=cache)[:, -1, :]
        token = mx.argmax(logits, axis=-1)
        mx.eval(token, [c.state for c in cache])
        rows.append([(mx.array(k), mx.array(v)) for k, v in rows_from_kv_caches(cache)])  # the run goes on
        for n in range(steps):
            inputs[n].append(token)
            logits = model(token[:, None], cache=cache)[:, -1, :]
            lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            logprobs[n].append(lp)
            token = mx.argmax(lp, axis=-1)
        mx.eval(logprobs)
    return Reference(rows, [mx.concatenate(t) for t in inputs], [mx.concatenate(lp) for lp in logprobs])


def check(model: Any, prompts: Sequence[list[int]], steps: int = 3, reference: Reference | None = None,
          attention_kernel: bool = False) -> str | None:
    """Decode ``prompts`` (one row each, of different lengths) together with the compiled step, fed the
    tokens of one-by-one eager decoding (``reference``, made here when not given); None when every step's
    log-probabilities agree, else why not."""
    return checked_decoder(model, prompts, steps, reference, attention_kernel)[1]


def checked_decoder(model: Any, prompts: Sequence[list[int]], steps: int = 3, reference: Reference | None = None,
                    attention_kernel: bool = False) -> tuple[CompiledDecoder | None, str | None]:
    """``check()``, returning the checked decoder too: ``(decoder, None)``, or ``(None, why not)``."""
    reason = supported(model)
    if reason:
        return None, reason
    reference = reference or solo_reference(model, prompts, steps)
    try:
        decoder = CompiledDecoder(model, attention_kernel)
        static = StaticBatchCache.from_rows(reference.rows)
        what = "compiled steps' (decode-attention kernel)" if attention_kernel else "compiled steps'"
        reason = reference.mismatch(lambda tokens: decoder(static, tokens, "greedy")[1], what)
        if attention_kernel and not reason and not decoder.kernel_layers:
            reason = ("the decode-attention kernel takes none of its attention layers (one query token, "
                      "float16 or bfloat16, equal key and value head sizes)")
    except Exception as err:  # the model's attention does not take this cache
        kind = "the decode-attention kernel" if attention_kernel else "its attention"
        reason = f"{kind} does not trace with a fixed-size cache ({type(err).__name__}: {err})"
    return (None, reason) if reason else (decoder, None)
