"""The engine thread: one thread owns every MLX call; the event loop only exchanges messages with it.

The thread runs a scheduler over the set of active requests (``Job``). Each pass of the step loop admits
new jobs from the inbox, then gives every active job one unit of work: a prefill chunk (long prompts are
prefilled in ``prefill_chunk`` pieces, so they cannot stall the others) or one decode step. A decode step
is pipelined the way mlx-lm's ``generate_step`` is: the next token's graph is queued (``mx.async_eval``)
before the current token is read back, so Python's bookkeeping overlaps the computation.

Results go back to asyncio through the job's ``emit`` callback (``loop.call_soon_threadsafe``); a client
that disconnects sets ``Job.cancelled`` and the job is dropped at the next step.

Continuous batching and a prefix cache slot in here: admission (``_admit``), the per-step work
(``_step_all``) and the per-job KV cache are the places they change.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from higgs.messages import StopReason

from higgs_mlx.loader import LoadedModel
from higgs_mlx.stops import StopMatcher

log = logging.getLogger(__name__)


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

    def cancel(self) -> None:
        """Stop this job at the next step (safe from any thread)."""
        self.cancelled = True


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]


class Engine:
    """Owns the MLX thread and the scheduler over active jobs."""

    def __init__(self, prefill_chunk: int = 512) -> None:
        self.prefill_chunk = prefill_chunk
        self._inbox: queue.SimpleQueue[Job | _Call | None] = queue.SimpleQueue()
        self._active: list[Job] = []
        self._thread = threading.Thread(target=self._main, name="higgs-mlx-engine", daemon=True)
        self._stream: Any = None
        self._started = False
        self.completed = 0
        #: Set when the engine thread died of an unexpected error; new work is refused with it.
        self.crashed: BaseException | None = None

    # -- any thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine thread (idempotent)."""
        if not self._started:
            self._started = True
            self._thread.start()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the engine thread (model loading, tokenizer work that touches MLX)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._inbox.put(_Call(fn, future))
        return future

    def submit(self, job: Job) -> None:
        """Queue a job; it starts at the next step (a dead engine fails it at once)."""
        if self.crashed is not None:
            job.emit(Failed(RuntimeError(f"the local engine stopped after an error: {self.crashed}")))
            return
        self._inbox.put(job)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the thread (active jobs are cancelled)."""
        if self._started and self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join(timeout)

    def state(self) -> dict[str, Any]:
        """Live numbers for ``/metrics``."""
        active = list(self._active)
        kv = 0
        for job in active:
            for c in job.cache or ():
                try:
                    kv += int(c.nbytes)
                except Exception:  # a cache layer that is still empty has no arrays yet
                    pass
        return {
            "active_requests": len(active),
            "prefilling": sum(1 for j in active if j.prefilling),
            "queue_depth": self._inbox.qsize(),
            "kv_cache_bytes": kv,
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
                steps += 1
                if not self._active or steps % 256 == 0:
                    # Return MLX's cached buffers now and then (and when idle), as generate_step does,
                    # so a long-running server does not hold the peak of every past request.
                    mx.clear_cache()
        except BaseException as err:  # never leave callers waiting on a dead thread
            log.exception("the engine thread failed")
            self.crashed = reason = err
        for job in self._active:
            job.emit(Failed(reason))
        self._active.clear()
        while True:  # whatever is still queued
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Job):
                item.emit(Failed(reason))
            elif isinstance(item, _Call) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(RuntimeError(f"the engine stopped: {reason}"))

    def _drain_inbox(self) -> bool:
        """Admit everything waiting; block only while idle. False when asked to stop."""
        while True:
            try:
                item = self._inbox.get(block=not self._active)
            except queue.Empty:
                return True
            if item is None:
                return False
            if isinstance(item, _Call):
                if item.future.set_running_or_notify_cancel():
                    try:
                        item.future.set_result(item.fn())
                    except BaseException as err:
                        item.future.set_exception(err)
            else:
                try:
                    self._admit(item)
                except Exception as err:  # this job cannot start; the others are fine
                    log.exception("cannot start a generation")
                    item.emit(Failed(err))
                except BaseException as err:
                    item.emit(Failed(err))
                    raise

    def _admit(self, job: Job) -> None:
        from mlx_lm.models.cache import make_prompt_cache

        if job.cancelled:
            return
        job.cache = make_prompt_cache(job.lm.model)
        job.detok = job.lm.tokenizer.detokenizer
        job.matcher = StopMatcher(job.stops)
        self._active.append(job)

    def _step_all(self) -> None:
        for job in list(self._active):
            if job.cancelled:
                self._drop(job)
                continue
            try:
                if job.prefilling:
                    self._prefill(job)
                else:
                    self._decode(job)
            except Exception as err:
                log.exception("generation failed")
                self._drop(job)
                job.emit(Failed(err))

    def _drop(self, job: Job) -> None:
        if job in self._active:
            self._active.remove(job)
        job.cache = job.pending = job.history = None

    def _forward(self, job: Job, tokens: Any, **embeds: Any) -> tuple[Any, Any]:
        """One model call on ``tokens`` -> (sampled token, log-probabilities), like mlx-lm's ``_step``."""
        import mlx.core as mx

        logits = job.lm.model(tokens[None], cache=job.cache, **embeds)[:, -1, :]
        if job.processors:
            job.history = tokens if job.history is None else mx.concatenate([job.history, tokens])
            for processor in job.processors:
                logits = processor(job.history, logits)
        logprobs = logits - mx.logsumexp(logits, keepdims=True)
        return job.sampler(logprobs), logprobs.squeeze(0)

    def _prefill(self, job: Job) -> None:
        import mlx.core as mx

        with mx.stream(self._stream):
            remaining = len(job.prompt) - job.pos - 1
            if remaining > 0:
                n = min(self.prefill_chunk, remaining)
                chunk = mx.array(job.prompt[job.pos : job.pos + n])
                job.lm.model(chunk[None], cache=job.cache, **_embeds(job, job.pos, job.pos + n))
                mx.eval([c.state for c in job.cache])
                if job.processors:
                    job.history = chunk if job.history is None else mx.concatenate([job.history, chunk])
                job.pos += n
                return
            y, logprobs = self._forward(job, mx.array(job.prompt[job.pos :]), **_embeds(job, job.pos, None))
            mx.async_eval(y, logprobs)  # type: ignore[no-untyped-call]
            job.embeds = None
            job.pos = len(job.prompt)
            job.pending = (y, logprobs)
            job.prefilling = False

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
        self.completed += 1
        job.emit(Done(reason, stop, len(job.prompt), job.n_out))

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
