"""The engine thread: one thread owns every MLX call; the event loop only exchanges messages with it.

The thread runs a scheduler over the set of active requests (``Job``). Each pass of the step loop:

1. takes new jobs from the inbox into a bounded waiting queue (``max_queue``; beyond it a job fails at
   once with a 503 ``overloaded`` carrying ``retry_after``) and admits waiting jobs while fewer than
   ``max_batch`` are active; admission looks the prompt up in the prefix cache (``prefix_cache.py``) and
   starts the job's KV cache from the cached prefix;
2. prefills: at most ``prefill_chunk`` prompt tokens per pass (whole chunks, oldest job first), so a long
   prompt is spread over many passes and cannot stall the running streams; a finished prefill inserts the
   prompt's KV into the prefix cache;
3. decodes: with batching on (the default), every decoding job of a model advances in one model call
   (``batching.DecodeBatch``); with it off, each job takes one decode step of its own. Either way a step
   is pipelined the way mlx-lm's ``generate_step`` is: the next token's graph is queued
   (``mx.async_eval``) before the current token is read back, so Python's bookkeeping overlaps the
   computation, and each step syncs with the device once.

Results go back to asyncio through the job's ``emit`` callback (``loop.call_soon_threadsafe``); a client
that disconnects sets ``Job.cancelled`` and the job (queued or running) is dropped at the next pass.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from higgs.errors import ApiError
from higgs.messages import StopReason

from higgs_mlx import prefill_shapes
from higgs_mlx.batching import DecodeBatch, can_batch, prefill_group, row_views
from higgs_mlx.loader import LoadedModel, on_cpu
from higgs_mlx.prefix_cache import PrefixCache
from higgs_mlx.stops import StopMatcher

log = logging.getLogger(__name__)

#: Defaults of the scheduler's knobs (``[server]`` keys of the same names; see docs/engine.md).
#: Prompt tokens per prefill call while nothing else decodes: mlx-lm's prefill step. On a GPU a 2048-token
#: call runs about twice the tokens/s of a 512-token one (fewer, fuller kernels).
DEFAULT_PREFILL_CHUNK = 2048
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_QUEUE = 256
DEFAULT_PREFIX_CACHE_BYTES = 1 << 30
#: Prefill chunk while other requests are decoding: bounds their inter-token gap to one such chunk. It is the
#: smallest chunk: once a model's prefill speed is known, the chunk is what it prefills in ``interleave_ms``.
DEFAULT_INTERLEAVE_CHUNK = 128
#: Longest pause (ms) a prefill chunk should put between two tokens of the running streams.
DEFAULT_INTERLEAVE_MS = 50.0
#: Most padded prompt tokens of a burst of short prompts prefilled together in one call.
DEFAULT_GROUP_PREFILL = 2048
#: Idle seconds before MLX's buffer cache is returned to the device (requests closer together reuse it).
DEFAULT_IDLE_CLEAR_SECONDS = 2.0
#: Longest wait (ms) of an idle engine for requests announced (``Engine.expect``) but not yet submitted, so
#: a burst is prefilled as one group instead of its first request alone and the rest after it.
DEFAULT_GATHER_MS = 20.0


@dataclass
class Chunk:
    """New text (possibly empty when only logprobs are reported) and the token ids behind it."""

    text: str
    tokens: list[int]
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Done:
    """The job finished normally."""

    reason: StopReason
    stop_sequence: str | None
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int = 0


@dataclass
class Failed:
    """The job failed on the engine thread."""

    error: BaseException


EngineOutput = Chunk | Done | Failed


@dataclass
class Job:
    """One generation request as the engine sees it.

    Attributes:
        lm: the model to run.
        prompt: prompt token ids (never empty).
        max_tokens: most tokens to generate.
        sampler: ``logprobs -> token`` (see ``higgs_mlx.sampling``).
        processors: mlx-lm logits processors ``(tokens, logits) -> logits``.
        stops: stop strings.
        emit: called on the engine thread with each ``EngineOutput``; must be thread-safe and non-blocking.
        top_logprobs: None for no logprobs, else how many alternatives to report per token (0 = only the
            chosen token's).
        ignore_eos: keep generating through EOS tokens until ``max_tokens`` or a stop string (benchmarks,
            vLLM's ``ignore_eos``).
    """

    lm: LoadedModel
    prompt: list[int]
    max_tokens: int
    sampler: Callable[[Any], Any]
    emit: Callable[[EngineOutput], None]
    processors: list[Callable[[Any, Any], Any]] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    top_logprobs: int | None = None
    ignore_eos: bool = False
    cancelled: bool = False
    # engine-side state
    submitted: float = field(default_factory=time.perf_counter)
    pos: int = 0
    n_out: int = 0
    prefilling: bool = True
    cache: Any = None
    pending: Any = None
    history: Any = None
    detok: Any = None
    matcher: StopMatcher | None = None
    #: Vision prompts (``higgs_mlx.vision``): input embeddings ``(1, len(prompt), hidden)`` with the images
    #: spliced in; prefill feeds ``embeds[:, pos:...]`` instead of embedding ``prompt[pos:...]``. The image
    #: positions of ``prompt`` hold ids derived from the image's hash, so a token-keyed prefix cache hits
    #: only on the same image at the same place; a hit just advances ``pos``.
    embeds: Any = None
    #: Prompt tokens whose KV came from the prefix cache.
    cached: int = 0
    #: An exact repeat's stored logits after its last prompt token (the prefix cache had every token).
    final_logits: Any = None
    #: Whether the prompt's KV goes into the prefix cache after prefill.
    cache_prefix: bool = False
    in_batch: bool = False
    finished: bool = False

    def cancel(self) -> None:
        """Stop this job at the next step (safe from any thread)."""
        self.cancelled = True


class Arrival:
    """A request the engine will be given soon (``Engine.expect``): released when its job is submitted
    (``Engine.submit``) or, as a context manager, at the latest when the request's code leaves the block."""

    def __init__(self, engine: Engine) -> None:
        self._engine: Engine | None = engine

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """No longer expected (idempotent)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine._announce(-1)


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]


class Engine:
    """Owns the MLX thread and the scheduler over active jobs."""

    def __init__(self, prefill_chunk: int = DEFAULT_PREFILL_CHUNK, *, batch: bool = True,
                 max_batch: int = DEFAULT_MAX_BATCH, max_queue: int = DEFAULT_MAX_QUEUE,
                 prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
                 interleave_chunk: int = DEFAULT_INTERLEAVE_CHUNK, group_prefill: int = DEFAULT_GROUP_PREFILL,
                 compiled_decode: bool | None = None, interleave_ms: float = DEFAULT_INTERLEAVE_MS,
                 attention_kernel: bool | None = None, prefill_padding: bool = False,
                 gather_ms: float = DEFAULT_GATHER_MS) -> None:
        #: Prompt tokens per prefill chunk (and per pass) while nothing else decodes.
        self.prefill_chunk = prefill_chunk
        #: The same while other requests decode (smaller, so they keep streaming): at least this many tokens,
        #: more where the model is known to prefill more in ``interleave_ms`` (0 = always this many).
        self.interleave_chunk = interleave_chunk
        self.interleave_ms = interleave_ms
        #: Measured prefill speeds (tokens/s of the last chunks) by model.
        self._prefill_rate: dict[int, deque[float]] = {}
        #: Continuous batching for models without their own setting (``configure_model``).
        self.batch = batch
        #: Most jobs prefilling or decoding at once; more wait in the queue.
        self.max_batch = max(1, max_batch)
        #: Most jobs waiting; beyond it new jobs fail with a 503 and ``retry_after``.
        self.max_queue = max(0, max_queue)
        self.prefix = PrefixCache(prefix_cache_bytes)
        self._inbox: queue.SimpleQueue[Job | _Call | None] = queue.SimpleQueue()
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._batches: dict[int, DecodeBatch] = {}
        self._batch_models: dict[int, bool] = {}
        self.rejected = 0
        self.peak_batch = 0
        #: Prefill short prompts that wait together in one padded call (batching on only).
        self.batch_prefill = True
        #: Most padded prompt tokens prefilled together in one call.
        self.group_prefill = group_prefill
        #: Group prefill calls, and the prompts they prefilled (``/metrics``).
        self.grouped_prefills = 0
        self.grouped_prompts = 0
        #: Batched decode steps through the model's compiled step function where the model allows it
        #: (None: on a GPU, off on MLX's CPU backend, where the step is bound by the kernels, not the host).
        self.compiled_decode = compiled_decode
        #: Compiled steps attend with the fused decode-attention kernel (``decode_attention``), else with
        #: MLX's masked attention; checked per model like the step. None: where the kernel runs (CUDA).
        self.attention_kernel = attention_kernel
        #: Pad prefill calls to the few widths and row counts of ``prefill_shapes`` (for MLX's per-shape
        #: cuDNN attention graphs on CUDA), where a model's cache layers allow it.
        self.prefill_padding = prefill_padding
        #: Longest wait of an idle engine, once work arrived, for requests still being prepared (0 = none).
        self.gather_ms = gather_ms
        self._incoming = 0
        self._incoming_lock = threading.Lock()
        #: Seconds of idleness after which MLX's buffer cache is returned (``_drain_inbox``).
        self.idle_clear_seconds = DEFAULT_IDLE_CLEAR_SECONDS
        self._cache_cleared = True
        self._prepared: dict[int, tuple[bool, Any]] = {}
        #: Why a model decodes eagerly although ``compiled_decode`` is on, by model name.
        self.eager_reasons: dict[str, str] = {}
        self._flushes: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._main, name="higgs-mlx-engine", daemon=True)
        self._stream: Any = None
        self._started = False
        self._started_at = time.perf_counter()
        self.completed = 0
        #: Host seconds the engine thread spent prefilling and decoding (each including its waits for the
        #: device), and the sum of the jobs' times from submission to their first token: ``/metrics``
        #: counters; a benchmark reads their differences over a workload.
        self.prefill_seconds = 0.0
        self.decode_seconds = 0.0
        self.first_token_seconds = 0.0
        self.first_tokens = 0
        #: Set when the engine thread died of an unexpected error; new work is refused with it.
        self.crashed: BaseException | None = None

    # -- any thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine thread (idempotent)."""
        if not self._started:
            self._started = True
            self._started_at = time.perf_counter()
            self._thread.start()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the engine thread (model loading, tokenizer work that touches MLX)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._inbox.put(_Call(fn, future))
        return future

    def configure_model(self, lm: LoadedModel, *, batch: bool | None = None) -> None:
        """Per-model settings (``[[models]] batch``); None keeps the engine's default."""
        if batch is not None:
            self._batch_models[id(lm)] = batch

    def add_flush(self, flush: Callable[[], None]) -> None:
        """Call ``flush`` on the engine thread after every pass and before the thread waits for work: an
        emitter may hold a pass's outputs and hand them over in one go (``higgs_mlx.provider._Mailbox``)."""
        self._flushes.append(flush)

    def _flush(self) -> None:
        for flush in self._flushes:
            try:
                flush()
            except Exception:  # an emitter's problem must not stop the engine
                log.exception("flushing engine outputs failed")

    def on_engine_thread(self) -> bool:
        """Whether the caller runs on the engine thread."""
        return threading.current_thread() is self._thread

    def expect(self) -> Arrival:
        """Announce a request whose prompt is being prepared (template, tokenizer) and that will be submitted
        soon: an idle engine that is given work waits up to ``gather_ms`` for the announced ones, so
        requests sent together are prefilled together. Release the arrival once its job is submitted."""
        self._announce(1)
        return Arrival(self)

    def _announce(self, change: int) -> None:
        with self._incoming_lock:
            self._incoming += change

    def queued(self) -> int:
        """Jobs submitted but not yet started."""
        return self._inbox.qsize() + len(self._waiting)

    def submit(self, job: Job, arrival: Arrival | None = None) -> None:
        """Queue a job; it starts at the next step (a dead engine or a full queue fails it at once).

        ``arrival`` (the job's announcement, ``expect``) is released just before the job is queued, so an
        engine woken by the job finds it no longer announced and does not wait for it."""
        if arrival is not None:
            arrival.release()
        if self.crashed is not None:
            job.emit(Failed(RuntimeError(f"the local engine stopped after an error: {self.crashed}")))
            return
        if self.queued() >= self.max_queue + max(0, self.max_batch - len(self._active)):
            self.rejected += 1
            wait = max(1.0, self._expected_wait())
            job.emit(Failed(ApiError(503, "overloaded", f"The local engine is busy ({len(self._active)} requests "
                                     f"running, {self.queued()} waiting); retry in {wait:.0f} s.",
                                     code="engine_overloaded", retry_after=wait)))
            return
        self._inbox.put(job)

    def _expected_wait(self) -> float:
        """A rough retry-after: the queue ahead divided by recent throughput (2 s per batch when unknown)."""
        rate = self.completed / max(1e-3, time.perf_counter() - self._started_at) if self.completed else 0.0
        return min(60.0, (self.queued() / rate) if rate else 2.0 * (1 + self.queued() // self.max_batch))

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the thread (active jobs are cancelled)."""
        if self._started and self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join(timeout)

    def state(self) -> dict[str, Any]:
        """Live numbers for ``/metrics``."""
        active = list(self._active)
        batches = list(self._batches.values())
        kv = sum(b.kv_bytes() for b in batches)
        for job in active:
            for c in job.cache or ():
                try:
                    kv += int(c.nbytes)
                except Exception:  # a cache layer that is still empty has no arrays yet
                    pass
        return {
            "active_requests": len(active),
            "prefilling": sum(1 for j in active if j.prefilling),
            "batch_size": sum(len(b.rows) for b in batches),
            "peak_batch_size": self.peak_batch,
            "queue_depth": self.queued(),
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
            "rejected_requests": self.rejected,
            "grouped_prefills": self.grouped_prefills,
            "grouped_prompts": self.grouped_prompts,
            "announced_requests": self._incoming,
            "compiled_decode_models": sum(1 for _, d in self._prepared.values() if d is not None),
            "attention_kernel_models": sum(1 for _, d in self._prepared.values() if d and d.attention_kernel),
            "compiled_traces": sum(len(d.shapes) for _, d in self._prepared.values() if d is not None),
            "compiled_trace_seconds": sum(d.trace_seconds for _, d in self._prepared.values() if d is not None),
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
            "first_token_seconds": self.first_token_seconds,
            "first_tokens": self.first_tokens,
            "kv_cache_bytes": kv,
            **self.prefix.state(),
            "completed_requests": self.completed,
        }

    # -- engine thread ------------------------------------------------------------------------------
    def _main(self) -> None:
        import mlx.core as mx

        reason: BaseException = RuntimeError("the engine is shutting down")
        try:
            self._stream = mx.new_stream(mx.default_device())
            steps = 0
            while self._drain_inbox():
                self._step_all()
                self._flush()
                steps += 1
                if steps % 256 == 0:
                    # Return MLX's cached buffers now and then, as generate_step does, so a long run does
                    # not hold the peak of every step before (and when idle: ``_drain_inbox``).
                    mx.clear_cache()
        except BaseException as err:  # never leave callers waiting on a dead thread
            log.exception("the engine thread failed")
            self.crashed = reason = err
        for job in [*self._active, *self._waiting]:
            job.emit(Failed(reason))
        self._active.clear()
        self._waiting.clear()
        self._batches.clear()
        while True:  # whatever is still queued
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Job):
                item.emit(Failed(reason))
            elif isinstance(item, _Call) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(RuntimeError(f"the engine stopped: {reason}"))
        self._flush()

    def _drain_inbox(self) -> bool:
        """Queue everything sent, admit what fits; block only while idle. False when asked to stop.

        MLX's buffer cache is emptied once the engine has been idle for ``idle_clear_seconds``, not at
        once: requests that follow each other closely reuse the buffers the previous one allocated (freed
        buffers go back to the device, and the next request would allocate them all again)."""
        was_idle = not self._active
        while True:
            idle = not self._active and not self._waiting
            if idle:
                self._flush()  # nothing may wait in a mailbox while the thread sleeps
            wait = self.idle_clear_seconds if idle and not self._cache_cleared else None
            try:
                item = self._inbox.get(block=idle, timeout=wait)
            except queue.Empty:
                if not idle:
                    break
                import mlx.core as mx  # idle for ``wait`` seconds

                mx.clear_cache()
                self._cache_cleared = True
                continue
            self._cache_cleared = False
            if not self._take(item):
                return False
        if was_idle and self._waiting and not self._gather():
            return False
        if any(job.cancelled for job in self._waiting):  # a client that left while queued
            self._waiting = deque(job for job in self._waiting if not job.cancelled)
        while self._waiting and len(self._active) < self.max_batch:
            job = self._waiting.popleft()
            try:
                self._admit(job)
            except Exception as err:  # this job cannot start; the others are fine
                log.exception("cannot start a generation")
                self._drop(job)
                job.emit(Failed(err))
            except BaseException as err:
                job.emit(Failed(err))
                raise
        return True

    def _take(self, item: Job | _Call | None) -> bool:
        """One inbox item: a job waits, a call runs; False for the stop signal."""
        if item is None:
            return False
        if isinstance(item, _Call):
            if item.future.set_running_or_notify_cancel():
                try:
                    item.future.set_result(item.fn())
                except BaseException as err:
                    item.future.set_exception(err)
        else:
            self._waiting.append(item)
        return True

    def _gather(self) -> bool:
        """Work reached an idle engine: wait up to ``gather_ms`` while announced requests are still being
        prepared (``expect``), so a burst starts as one prefill. False for the stop signal."""
        deadline = time.perf_counter() + self.gather_ms / 1000
        while self._incoming > 0 and (left := deadline - time.perf_counter()) > 0:
            try:
                item = self._inbox.get(timeout=min(left, 0.0005))
            except queue.Empty:
                continue
            if not self._take(item):
                return False
        return True

    def _admit(self, job: Job) -> None:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        if job.cancelled:
            return
        job.cache = make_prompt_cache(job.lm.model)
        job.detok = job.lm.tokenizer.detokenizer
        job.matcher = StopMatcher(job.stops)
        if self.prefix.supports(id(job.lm), job.cache, job.lm.name):
            job.cache_prefix = True
            hit = self.prefix.lookup(id(job.lm), job.prompt)
            if hit.cache is not None:
                job.cache, job.pos, job.cached = hit.cache, hit.tokens, hit.tokens
                job.final_logits = hit.logits
                if job.processors:
                    job.history = mx.array(job.prompt[: job.pos])
        self._active.append(job)

    def _step_all(self) -> None:
        decoding = bool(self._batches) or any(not j.prefilling for j in self._active)
        chunk = self._interleave_size() if decoding else self.prefill_chunk
        budget = chunk
        started = time.perf_counter()
        if self.batch_prefill:
            # A burst of short prompts is prefilled together up to group_prefill tokens, even while others
            # decode (throughput first; long prompts keep the small interleaved chunks).
            budget -= self._prefill_together(self.group_prefill, chunk)
        self.prefill_seconds += time.perf_counter() - started
        for job in list(self._active):
            if job.in_batch:
                continue
            if job.cancelled:
                self._drop(job)
                continue
            started = time.perf_counter()
            prefilling = job.prefilling
            try:
                if prefilling:
                    if budget > 0:
                        budget -= self._prefill(job, budget, chunk)
                        if not job.prefilling and self._batching(job):
                            self._batch_for(job.lm).join(job)
                            job.in_batch = True
                else:
                    self._decode(job)
            except Exception as err:
                log.exception("generation failed")
                self._drop(job)
                job.emit(Failed(err))
            spent = time.perf_counter() - started
            if prefilling:
                self.prefill_seconds += spent
            else:
                self.decode_seconds += spent
        decoding_from = time.perf_counter()
        for key, batch in list(self._batches.items()):
            try:
                for job in batch.step(self._stream):
                    self._drop(job)
            except Exception as err:
                log.exception("batched generation failed")
                for job in batch.jobs():
                    self._drop(job)
                    if not job.finished:
                        job.emit(Failed(err))
                batch.rows, batch.cache = [], None
            if not len(batch):
                del self._batches[key]
            else:
                self.peak_batch = max(self.peak_batch, len(batch.rows))
        self.decode_seconds += time.perf_counter() - decoding_from

    def _interleave_size(self) -> int:
        """Prompt tokens per pass while others decode: what the slowest model with a prompt to prefill does
        in ``interleave_ms`` (by its measured speed), in whole ``interleave_chunk``s, at least one."""
        low = min(self.prefill_chunk, self.interleave_chunk)
        rates = [self._prefill_rate.get(id(job.lm.model)) for job in self._active if job.prefilling]
        if not self.interleave_ms or not rates or None in rates:
            return low
        # the best of the recent chunks: a chunk that waited for a decode step, or for kernels compiled at
        # their first use, took longer than prefilling alone does
        tokens = int(min(max(r) for r in rates if r) * self.interleave_ms / 1000)
        return min(self.prefill_chunk, max(low, tokens // low * low))

    def _measured(self, lm: LoadedModel, tokens: int, seconds: float) -> None:
        if tokens >= 32 and seconds > 0:
            self._prefill_rate.setdefault(id(lm.model), deque(maxlen=8)).append(tokens / seconds)

    def _prefill_together(self, budget: int, chunk: int) -> int:
        """Prefill short prompts that arrived together in one padded call per model (as mlx_lm's server
        does), so simultaneous requests start decoding together. Returns the tokens used.

        A prompt whose start came from the prefix cache joins with its cached part (the group's batch cache
        is merged from the rows' caches, left-padded): requests through one chat template share its first
        tokens, so nearly every prompt after the first has a hit of a few tokens."""
        import mlx.core as mx

        groups: dict[int, list[Job]] = {}
        for job in self._active:
            # not started (nothing computed beyond a cache hit: a long prompt's chunks keep their bound) and
            # not an exact repeat (its first token comes from stored logits)
            if (job.prefilling and not job.cancelled and job.embeds is None and job.pos == job.cached
                    and job.final_logits is None and len(job.prompt) - job.pos <= self.prefill_chunk
                    and self._batching(job)):
                group = groups.setdefault(id(job.lm), [])
                width = max(len(j.prompt) - j.pos for j in [job, *group])
                if width * (len(group) + 1) > budget and group:
                    continue
                group.append(job)
        used = 0
        for jobs in groups.values():
            if len(jobs) < 2:
                continue
            try:
                with mx.stream(self._stream):
                    cache, y, logprobs, logits = prefill_group(jobs, chunk, self.prefill_padding)
                    stored: list[Any] = []
                    if any(job.cache_prefix for job in jobs):
                        for i, (job, layers) in enumerate(zip(jobs, row_views(cache), strict=True)):
                            if job.cache_prefix:
                                stored += self.prefix.insert(id(job.lm), job.prompt, layers, logits[i])
                    mx.async_eval(y, logprobs, *stored)  # type: ignore[no-untyped-call]
            except Exception as err:
                log.exception("batched prefill failed")
                for job in jobs:
                    self._drop(job)
                    job.emit(Failed(err))
                continue
            self.grouped_prefills += 1
            self.grouped_prompts += len(jobs)
            for job in jobs:
                used += len(job.prompt) - job.pos
                job.pos, job.prefilling, job.cache, job.in_batch = len(job.prompt), False, None, True
            self._batch_for(jobs[0].lm).join_group(jobs, cache, y, logprobs)
        return used

    def _batch_for(self, lm: LoadedModel) -> DecodeBatch:
        batch = self._batches.get(id(lm))
        if batch is None:
            batch = self._batches[id(lm)] = DecodeBatch(self._emit_row, self.decoder(lm))
        return batch

    def decoder(self, lm: LoadedModel) -> Any:
        """The model's ``CompiledDecoder`` (checked against eager decoding once), or None to decode eagerly."""
        return self.prepare(lm)[1]

    def prepare(self, lm: LoadedModel) -> tuple[bool, Any]:
        """Check once per model whether it decodes correctly in a batch and with compiled steps:
        ``(batches, compiled decoder or None)``. Reasons for "no" are logged and kept in ``eager_reasons``.

        Call on the engine thread; the provider calls it when a model is loaded, so the checks and the first
        trace happen before the first request."""
        key = id(lm.model)
        if key not in self._prepared:
            from higgs_mlx import compiled
            from higgs_mlx.batching import check_batching

            vocab = int(lm.config.get("vocab_size") or 256)
            # rows of different lengths, one beyond a buffer step (``compiled.CAPACITY_STEP``)
            prompts = [[(7 * i + 3) % vocab for i in range(70)], [(5 * i + 11) % vocab for i in range(37)]]
            plain = compiled.supported(lm.model) is None  # the checks below need plain KVCache layers
            # one solo decoding of the prompts is the reference of both checks
            reference = compiled.solo_reference(lm.model, prompts, 3) if plain else None
            batch_reason = check_batching(lm.model, prompts, reference=reference) if plain else None
            if batch_reason:
                log.warning("%s decodes one request at a time: %s", lm.name, batch_reason)
                self.eager_reasons[lm.name] = batch_reason
            decoder = None
            if not batch_reason and (self.compiled_decode if self.compiled_decode is not None else not on_cpu()):
                if self._wants_kernel():
                    decoder, reason = compiled.checked_decoder(lm.model, prompts, reference=reference,
                                                               attention_kernel=True)
                    if reason:  # a warning where it was asked for, news where it is only the default
                        log.log(logging.WARNING if self.attention_kernel else logging.INFO,
                                "%s: compiled steps attend without the fused kernel: %s", lm.name, reason)
                if decoder is None:
                    decoder, reason = compiled.checked_decoder(lm.model, prompts, reference=reference)
                if reason:
                    self.eager_reasons[lm.name] = reason
                    log.info("compiled decode steps off for %s: %s", lm.name, reason)
            self._prepared[key] = (batch_reason is None, decoder)
        return self._prepared[key]

    def _wants_kernel(self) -> bool:
        """Whether compiled steps try the decode-attention kernel first (``attention_kernel``)."""
        if self.attention_kernel is not None:
            return self.attention_kernel
        from higgs_mlx import decode_attention

        return decode_attention.available()

    def _batching(self, job: Job) -> bool:
        """Whether ``job`` decodes in its model's batch."""
        return (self._batch_models.get(id(job.lm), self.batch) and can_batch(job.cache)
                and self.prepare(job.lm)[0])

    def _emit_row(self, job: Job, token: int, logprobs: Any) -> bool:
        """A batch row's token -> the job's outputs; True when the job finished."""
        if not job.cancelled:
            self._emit_token(job, token, logprobs)
        return job.finished

    def _drop(self, job: Job) -> None:
        if job in self._active:
            self._active.remove(job)
        job.in_batch = False
        job.cache = job.pending = job.history = None

    def _forward(self, job: Job, tokens: Any, **embeds: Any) -> tuple[Any, Any]:
        """One model call on ``tokens`` -> (sampled token, log-probabilities), like mlx-lm's ``_step``."""
        return self._sample(job, job.lm.model(tokens[None], cache=job.cache, **embeds)[:, -1, :], tokens)

    def _sample(self, job: Job, logits: Any, tokens: Any | None) -> tuple[Any, Any]:
        """``logits`` ``(1, vocab)`` after ``tokens`` (appended to the processors' history) -> (sampled token,
        log-probabilities)."""
        import mlx.core as mx

        if job.processors:
            if tokens is not None:
                job.history = tokens if job.history is None else mx.concatenate([job.history, tokens])
            for processor in job.processors:
                logits = processor(job.history, logits)
        logprobs = logits - mx.logsumexp(logits, keepdims=True)
        return job.sampler(logprobs), logprobs.squeeze(0)

    def _prefill(self, job: Job, budget: int, chunk_size: int) -> int:
        """Prefill ``chunk_size`` chunks of ``job``'s prompt while fewer than ``budget`` tokens were done;
        the last piece also samples the first token. Returns the number of prompt tokens processed."""
        import mlx.core as mx

        used = 0
        with mx.stream(self._stream):
            if job.final_logits is not None:  # an exact repeat: its first token from the stored logits
                job.pending = self._sample(job, job.final_logits[None], None)
                mx.async_eval(*job.pending)  # type: ignore[no-untyped-call]
                job.final_logits = job.embeds = None
                job.prefilling = False
                return 0
            while used < budget:
                remaining = len(job.prompt) - job.pos - 1
                if remaining > 0:
                    n = min(chunk_size, remaining)
                    tokens = job.prompt[job.pos : job.pos + n]
                    # full chunks repeat their shapes already; a prompt's last, partial one is padded
                    width = (prefill_shapes.width(n) if self.prefill_padding and n < chunk_size
                             and job.embeds is None and prefill_shapes.paddable(job.cache) else n)
                    started = time.perf_counter()
                    job.lm.model(mx.array(tokens + tokens[-1:] * (width - n))[None], cache=job.cache,
                                 **_embeds(job, job.pos, job.pos + n))
                    for c in job.cache if width > n else ():  # the next write overwrites the padding
                        c.trim(width - n)
                    mx.eval([c.state for c in job.cache])
                    self._measured(job.lm, n, time.perf_counter() - started)
                    if job.processors:
                        chunk = mx.array(tokens)
                        job.history = chunk if job.history is None else mx.concatenate([job.history, chunk])
                    job.pos += n
                    used += n
                    continue
                used += len(job.prompt) - job.pos
                last = mx.array(job.prompt[job.pos :])
                logits = job.lm.model(last[None], cache=job.cache, **_embeds(job, job.pos, None))[:, -1, :]
                y, logprobs = self._sample(job, logits, last)
                stored = (self.prefix.insert(id(job.lm), job.prompt, job.cache, logits[0]) if job.cache_prefix
                          else [])
                mx.async_eval(y, logprobs, *stored)  # type: ignore[no-untyped-call]
                job.embeds = None
                job.pos = len(job.prompt)
                job.pending = (y, logprobs)
                job.prefilling = False
                break
        return used

    def _decode(self, job: Job) -> None:
        import mlx.core as mx

        y, logprobs = job.pending
        more = job.n_out + 1 < job.max_tokens
        if more:
            with mx.stream(self._stream):
                upcoming = self._forward(job, y)
            mx.async_eval(*upcoming)  # type: ignore[no-untyped-call]
        token = int(y.item())
        job.n_out += 1
        job.pending = upcoming if more else None
        self._emit_token(job, token, logprobs)

    def _emit_token(self, job: Job, token: int, logprobs: Any) -> None:
        assert job.matcher is not None
        if job.n_out == 1:
            self.first_tokens += 1
            self.first_token_seconds += time.perf_counter() - job.submitted
        info = self._logprobs(job, token, logprobs) if job.top_logprobs is not None else None
        if token in job.lm.eos_ids and not job.ignore_eos:
            self._finish(job, "end_turn", info)
            return
        job.detok.add_token(token)
        text, stop = job.matcher.feed(job.detok.last_segment)
        if stop is not None:
            self._finish(job, "stop_sequence", info, prefix=text, stop=stop)
        elif job.n_out >= job.max_tokens:
            self._finish(job, "max_tokens", info, prefix=text)
        elif text or info:
            job.emit(Chunk(text, [token], info))

    def _finish(self, job: Job, reason: StopReason, info: list[dict[str, Any]] | None, *,
                prefix: str = "", stop: str | None = None) -> None:
        assert job.matcher is not None
        text = prefix
        if stop is None:
            job.detok.finalize()
            tail, stop = job.matcher.feed(job.detok.last_segment)
            text += tail
            if stop is None:
                text += job.matcher.flush()
            else:
                reason = "stop_sequence"
        if text or info:
            job.emit(Chunk(text, [], info))
        self._drop(job)
        job.finished = True
        self.completed += 1
        job.emit(Done(reason, stop, len(job.prompt), job.n_out, job.cached))

    def _logprobs(self, job: Job, token: int, logprobs: Any) -> list[dict[str, Any]]:
        import mlx.core as mx

        tok = job.lm.tokenizer
        entry: dict[str, Any] = {"token": tok.decode([token]), "id": token,
                                 "logprob": float(logprobs[token].item()), "top_logprobs": []}
        k = min(job.top_logprobs or 0, 20)
        if k:
            ids = mx.argpartition(-logprobs, kth=k - 1)[:k]
            vals = logprobs[ids]
            id_list: list[int] = ids.tolist()  # type: ignore[assignment]
            val_list: list[float] = vals.tolist()
            pairs = sorted(zip(id_list, val_list, strict=True), key=lambda p: -p[1])
            entry["top_logprobs"] = [{"token": tok.decode([i]), "id": i, "logprob": v} for i, v in pairs]
        return [entry]


def _embeds(job: Job, start: int, end: int | None) -> dict[str, Any]:
    """``input_embeddings`` for prompt positions ``start:end`` of a vision job, else nothing."""
    if job.embeds is None:
        return {}
    return {"input_embeddings": job.embeds[:, start:end]}
