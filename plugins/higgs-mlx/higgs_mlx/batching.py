"""Continuous batching: the decoding jobs of one model advance together, one model call per step.

A ``DecodeBatch`` owns the rows (jobs) that finished their prefill, their KV caches merged into mlx-lm's
batch caches (``BatchKVCache``: left-padded, one offset per row; ``BatchRotatingKVCache`` and
``ArraysCache`` for sliding-window and SSM layers), and the pending tokens of the next step.

One step, pipelined like mlx-lm's ``generate_step``:

1. jobs that finished their prefill join: their caches are merged in (``extend``) and their first token
   is appended to the pending tokens;
2. the graph of the *next* tokens is built from the pending ones and queued with ``mx.async_eval``;
3. the pending tokens are read back (the step's only host sync) and handed to each job's emitter;
4. rows that finished (EOS, stop string, ``max_tokens``, cancelled) are filtered out of the caches and of
   the queued next tokens.

Per-request sampling stays per row: a batch whose rows are all greedy without logits processors samples
with one ``argmax``; otherwise each row's processors (penalties, logit bias, JSON-schema constraints) and
sampler (own PRNG key) run on its own logits row. A batch of one row keeps the job's own ``KVCache``
(no padding masks), so a single stream runs the same code as the unbatched engine.

With a ``CompiledDecoder`` (``compiled.py``: models whose layers are plain ``KVCache``s), the rows' KV
lives in a ``StaticBatchCache`` instead, and each step is one call of the model's compiled step function
(the same arithmetic, replayed without rebuilding the graph in Python). Rows joining are copied into that
cache right-aligned beside the running ones (``add_blocks``: a group's rows in one copy per layer); rows
leaving are filtered out of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from higgs_mlx.compiled import CompiledDecoder, Reference
    from higgs_mlx.engine import Job

log = logging.getLogger(__name__)


def can_batch(cache: list[Any]) -> bool:
    """Whether every layer of a cache can be merged into one of mlx-lm's batch caches (``KVCache``,
    ``RotatingKVCache``, ``ArraysCache`` and ``CacheList`` can; quantized and chunked caches cannot)."""
    return bool(cache) and all(callable(getattr(type(c), "merge", None)) for c in cache)


def check_batching(model: Any, prompts: list[list[int]], steps: int = 3, reference: Reference | None = None
                   ) -> str | None:
    """Decode ``prompts`` (different lengths) together through mlx-lm's batch caches, fed the tokens of
    one-by-one decoding (``reference``, made here when not given); None when every step's log-probabilities
    agree, else why not. Some of mlx-lm's attention code does not take batch masks (gemma2 reshapes queries
    to 5 dimensions, so a ``(B, 1, 1, S)`` mask lands on the heads axis)."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    from higgs_mlx.compiled import solo_reference

    reference = reference or solo_reference(model, prompts, steps)
    cache = []
    for layer in range(len(reference.rows[0])):
        parts = []
        for row in reference.rows:
            c = KVCache()  # type: ignore[no-untyped-call]
            c.state = (*row[layer], int(row[layer][0].shape[2]))
            parts.append(c)
        cache.append(KVCache.merge(parts))  # type: ignore[no-untyped-call]

    def step(tokens: Any) -> Any:
        logits = model(tokens[:, None], cache=cache)[:, -1, :]
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True)

    try:
        return reference.mismatch(step, "batched steps'")
    except Exception as err:
        return f"its attention fails on batch caches ({type(err).__name__}: {err})"


class DecodeBatch:
    """The decoding rows of one model."""

    def __init__(self, finish_row: Callable[[Job, int, Any], bool], decoder: CompiledDecoder | None = None) -> None:
        #: ``(job, token, logprobs row) -> finished?``: emits the token (the engine's bookkeeping).
        self._finish_row = finish_row
        #: The model's compiled step; with it the KV lives in a ``StaticBatchCache`` (``self.cache``).
        self.decoder = decoder
        self.rows: list[Job] = []
        self.cache: Any = None  # list of mlx-lm cache layers, or a StaticBatchCache with a decoder
        self.batched = False  # False: one row on its own KVCache
        self.tokens: Any = None  # pending tokens, shape (B,) (or one per slot of a StaticBatchCache)
        self.logprobs: Any = None  # their log-probabilities, shape (B, vocab)
        self._joining: list[Job] = []
        self._groups: list[tuple[list[Job], list[Any], Any, Any]] = []

    def __len__(self) -> int:
        return len(self.rows) + len(self._joining)

    def join(self, job: Job) -> None:
        """Add a job whose prefill is done (``job.pending`` holds its first token); it runs next step."""
        self._joining.append(job)

    def join_group(self, jobs: list[Job], cache: list[Any], tokens: Any, logprobs: Any) -> None:
        """Add jobs prefilled together (``prefill_group``): their batch cache and first tokens."""
        self._groups.append((jobs, cache, tokens, logprobs))
        self._joining.extend(jobs)

    def jobs(self) -> list[Job]:
        """Every job of the batch, joining ones included."""
        return [*self.rows, *self._joining]

    def kv_bytes(self) -> int:
        """Bytes held by the batch's caches."""
        if self.decoder is not None:
            return self.cache.nbytes if self.cache is not None else 0
        total = 0
        for c in self.cache or ():
            try:
                total += int(c.nbytes)
            except Exception:  # an empty layer has no arrays yet
                pass
        return total

    # -- one step -----------------------------------------------------------------------------------
    def step(self, stream: Any) -> list[Job]:
        """Advance every row by one token; return the jobs that left (finished or cancelled)."""
        import mlx.core as mx

        left = self._drop_cancelled()
        if self._joining:
            self._merge_joiners()
        if not self.rows:
            return left
        n = len(self.rows)
        more = [job.n_out + 1 < job.max_tokens for job in self.rows]
        upcoming: tuple[Any, Any] | None = None
        if any(more):
            with mx.stream(stream):
                upcoming = self._forward(self.tokens)
            mx.async_eval(*upcoming)  # type: ignore[no-untyped-call]
        tokens: list[int] = self.tokens.tolist()
        keep: list[int] = []
        for i, job in enumerate(self.rows):
            job.n_out += 1
            finished = self._finish_row(job, tokens[i], self.logprobs[i] if job.top_logprobs is not None else None)
            if not finished and not more[i]:  # max_tokens reached; the emitter already finished it
                finished = True
            if finished or job.cancelled:
                left.append(job)
            else:
                keep.append(i)
        if upcoming is None or not keep:
            self._reset()
            return left
        self.tokens, self.logprobs = upcoming
        if len(keep) < n:
            self._filter(keep)
        return left

    def _drop_cancelled(self) -> list[Job]:
        gone = [job for job in self._joining if job.cancelled]
        self._joining = [job for job in self._joining if not job.cancelled]
        keep = [i for i, job in enumerate(self.rows) if not job.cancelled]
        if len(keep) < len(self.rows):
            gone += [job for job in self.rows if job.cancelled]
            if keep:
                self._filter(keep)
            else:
                self._reset()
        return gone

    def _reset(self) -> None:
        self.rows = []
        self.cache = None
        self.batched = False
        self.tokens = self.logprobs = None

    def _merge_joiners(self) -> None:
        import mlx.core as mx

        if self.decoder is not None:
            self._merge_static()
            return
        groups, self._groups = self._groups, []
        grouped = {id(job) for jobs, *_ in groups for job in jobs}
        joiners, self._joining = [j for j in self._joining if id(j) not in grouped], []
        for jobs, cache, y, logprobs in groups:
            keep = [i for i, job in enumerate(jobs) if not job.cancelled]
            if not keep:
                continue
            if len(keep) < len(jobs):
                index = mx.array(keep)
                for c in cache:
                    c.filter(index)
                y, logprobs, jobs = y[index], logprobs[index], [jobs[i] for i in keep]
            if self.cache is None:
                self.cache, self.batched, self.tokens, self.logprobs = cache, True, y, logprobs
            else:
                if not self.batched:
                    self.cache = [type(c).merge([c]) for c in self.cache]
                    self.batched = True
                for layer, new in zip(self.cache, cache, strict=True):
                    layer.extend(new)
                self.tokens = mx.concatenate([self.tokens, y])
                self.logprobs = mx.concatenate([self.logprobs, logprobs])
            self.rows.extend(jobs)
        for job in joiners:
            y, logprobs = job.pending
            job.pending = None
            if self.cache is None:
                self.cache, self.batched = job.cache, False
                self.tokens, self.logprobs = y, logprobs[None]
            else:
                if not self.batched:
                    self.cache = [type(c).merge([c]) for c in self.cache]
                    self.batched = True
                for layer, new in zip(self.cache, job.cache, strict=True):
                    layer.extend(type(new).merge([new]))
                self.tokens = mx.concatenate([self.tokens, y])
                self.logprobs = mx.concatenate([self.logprobs, logprobs[None]])
            job.cache = None  # the batch owns it now
            self.rows.append(job)

    def _merge_static(self) -> None:
        """Joiners into the ``StaticBatchCache``: their KV right-aligned beside the running rows'."""
        import mlx.core as mx

        from higgs_mlx.compiled import RowBlock, StaticBatchCache, rows_from_kv_caches

        groups, self._groups = self._groups, []
        grouped = {id(job) for jobs, *_ in groups for job in jobs}
        joiners, self._joining = [j for j in self._joining if id(j) not in grouped], []
        blocks: list[RowBlock] = []  # the joining rows' KV: a group's rows as one block
        rows = len(self.rows)  # the pending tokens may have a row per slot of the cache (compiled.slots)
        tokens = [self.tokens[:rows]] if self.tokens is not None else []
        logprobs = [self.logprobs[:rows]] if self.logprobs is not None else []
        for jobs, cache, y, lp in groups:
            keep = [i for i, job in enumerate(jobs) if not job.cancelled]
            if not keep:
                continue
            blocks.append(RowBlock.of_batch_cache(cache, keep))
            index = mx.array(keep)
            tokens.append(y[index])
            logprobs.append(lp[index])
            self.rows.extend(jobs[i] for i in keep)
        for job in joiners:
            y, lp = job.pending
            job.pending = None
            blocks.append(RowBlock.of_row(rows_from_kv_caches(job.cache)))
            job.cache = None  # the batch owns it now
            tokens.append(y)
            logprobs.append(lp[None])
            self.rows.append(job)
        if not blocks:
            return
        if self.cache is None:
            self.cache = StaticBatchCache.from_blocks(blocks)
        else:
            self.cache.add_blocks(blocks)
        self.tokens = tokens[0] if len(tokens) == 1 else mx.concatenate(tokens)
        self.logprobs = logprobs[0] if len(logprobs) == 1 else mx.concatenate(logprobs)

    def _filter(self, keep: list[int]) -> None:
        import mlx.core as mx

        self.rows = [self.rows[i] for i in keep]
        index = mx.array(keep)
        self.tokens = self.tokens[index]
        self.logprobs = self.logprobs[index]
        assert self.cache is not None
        if self.decoder is not None:
            self.cache.filter(keep)
            return
        if len(keep) == 1 and self.batched:
            # Back to one stream: its own plain cache, no padding masks per step.
            self.cache = [c.extract(keep[0]) for c in self.cache]
            self.batched = False
            return
        for c in self.cache:
            c.filter(index)

    def _forward(self, tokens: Any) -> tuple[Any, Any]:
        """The model on the pending tokens -> (next tokens ``(B,)``, log-probabilities ``(B, vocab)``)."""
        if self.decoder is not None:
            if all(not job.processors and getattr(job.sampler, "greedy", False) for job in self.rows):
                y, logprobs = self.decoder(self.cache, tokens, "greedy")
                return y, logprobs
            (logits,) = self.decoder(self.cache, tokens, "logits")
        else:
            logits = self.rows[0].lm.model(tokens[:, None], cache=self.cache)[:, -1, :]
        return sample_rows(self.rows, logits, tokens)


def sample_rows(jobs: list[Job], logits: Any, tokens: Any | None) -> tuple[Any, Any]:
    """Each row's processors and sampler on ``logits`` ``(B, vocab)`` -> (tokens ``(B,)``, logprobs).

    ``tokens`` (``(B,)``, the inputs of this step) are appended to the histories the processors see."""
    import mlx.core as mx

    if all(not job.processors and getattr(job.sampler, "greedy", False) for job in jobs):
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return mx.argmax(logprobs, axis=-1), logprobs
    rows_lp = []
    rows_y = []
    for i, job in enumerate(jobs):
        row = logits[i : i + 1]
        if job.processors:
            if tokens is not None:
                token = tokens[i : i + 1]
                job.history = token if job.history is None else mx.concatenate([job.history, token])
            for processor in job.processors:
                row = processor(job.history, row)
        lp = row - mx.logsumexp(row, axis=-1, keepdims=True)
        rows_lp.append(lp)
        rows_y.append(job.sampler(lp).reshape(1))
    return mx.concatenate(rows_y), mx.concatenate(rows_lp)


class RowView:
    """One row of a batch cache layer as the prefix cache reads it: ``keys``/``values`` ``(1, heads, length,
    dim)`` slices (no copy) of the row's valid positions."""

    def __init__(self, keys: Any, values: Any) -> None:
        self.keys, self.values = keys, values


def row_views(cache: list[Any]) -> list[list[RowView]]:
    """Each row's layers of mlx-lm ``BatchKVCache`` layers, as slices: unlike ``extract``, no copy and no
    host sync per layer (the prefix cache copies what it keeps)."""
    from higgs_mlx.compiled import RowBlock

    block = RowBlock.of_batch_cache(cache)
    return [[RowView(k[i : i + 1, :, pad:], v[i : i + 1, :, pad:]) for k, v in block.kv]
            for i, pad in enumerate(block.left)]


def prefill_group(jobs: list[Job], chunk: int, padded: bool = False) -> tuple[list[Any], Any, Any, Any]:
    """Prefill several prompts of one model in padded calls, as mlx-lm's ``BatchGenerator`` does: the
    rows' caches (empty, or holding a prefix-cache hit: ``job.pos`` tokens) merged left-padded, the rest of
    every prompt but its last token right-padded (the caches' ``prepare``/``finalize`` roll the padding to
    the left), then every last token in one step. Returns (batch cache, first tokens ``(B,)``, logprobs
    ``(B, vocab)``, the logits those came from ``(B, vocab)``, before any processor).

    ``padded``: pad the calls' width and row count to the few shapes of ``prefill_shapes`` (models whose
    caches allow it)."""
    import mlx.core as mx

    from higgs_mlx import prefill_shapes

    model = jobs[0].lm.model
    padded = padded and prefill_shapes.paddable(jobs[0].cache)
    caches = [job.cache for job in jobs]
    bodies = [job.prompt[job.pos : -1] for job in jobs]
    if padded:  # spare rows: the first prompt again, on fresh caches of its own
        from mlx_lm.models.cache import make_prompt_cache

        from higgs_mlx.compiled import slots

        spare = slots(len(jobs)) - len(jobs)
        caches += [make_prompt_cache(model) for _ in range(spare)]
        bodies += bodies[:1] * spare
    cache = [type(layer).merge([c[i] for c in caches]) for i, layer in enumerate(jobs[0].cache)]
    lengths = [len(b) for b in bodies]
    width = max(lengths)
    if padded and width:
        width = prefill_shapes.width(width)
    if width:
        padding = [width - n for n in lengths]
        if max(padding):
            for c in cache:
                c.prepare(lengths=lengths, right_padding=padding)
        tokens = mx.array([b + [0] * (width - len(b)) for b in bodies])
        for start in range(0, width, chunk):
            model(tokens[:, start : start + chunk], cache=cache)
            mx.eval([c.state for c in cache])
        if max(padding):
            for c in cache:
                c.finalize()
    if len(bodies) > len(jobs):
        index = mx.arange(len(jobs))
        for c in cache:
            c.filter(index)
    for job in jobs:
        if job.processors:
            job.history = mx.array(job.prompt)
    last = mx.array([job.prompt[-1] for job in jobs])
    logits = model(last[:, None], cache=cache)[:, -1, :]
    y, logprobs = sample_rows(jobs, logits, None)
    return cache, y, logprobs, logits
