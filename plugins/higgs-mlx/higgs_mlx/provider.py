"""``MlxProvider``: the local provider instance (``higgs``) that serves every configured local model.

Requests are validated and rendered to token ids off the event loop (``asyncio.to_thread``), then handed
to the engine thread as ``Job`` records; generated text comes back through an ``asyncio.Queue`` and is
turned into canonical stream events by an ``OutputParser`` + ``EventBuilder`` (see ``output.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import os
import threading
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

from higgs.config import ModelSettings, ProviderSettings
from higgs.errors import ApiError, InvalidRequestError, UnknownModelError
from higgs.interfaces import CallContext, Provider, ProviderContext
from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorInfo,
    ModelInfo,
    Sampling,
    StopReason,
    StreamError,
    StreamEvent,
    StreamFinish,
    StreamStart,
    TextBlock,
    TextDelta,
    Usage,
    accumulate,
    new_id,
)

from higgs_mlx import prompt as prompts
from higgs_mlx import vision
from higgs_mlx.engine import Arrival, Chunk, Done, Engine, EngineOutput, Failed, Job
from higgs_mlx.loader import LoadedModel, ModelLoadError, load_model_dir, resolve_model_path, warm_up
from higgs_mlx.output import EventBuilder, OutputParser, PlainTextParser

log = logging.getLogger(__name__)

DEFAULT_ALIAS = "default"
_NO_AGENTS = object()


def _agents_module() -> ModuleType | None:
    """``higgs_mlx.agents`` when it is installed (tool calls, reasoning, structured output), else None."""
    try:
        return importlib.import_module("higgs_mlx.agents")
    except ModuleNotFoundError as err:
        if err.name not in ("higgs_mlx.agents",):
            raise
        return None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


class _Mailbox:
    """Engine outputs on their way to the event loop: one loop wake-up per engine pass, not one per token.

    A batched decode step emits a token for every row; a ``call_soon_threadsafe`` per token writes to the
    loop's self-pipe (a system call that also hands the GIL to the loop thread, so the engine thread waits
    for it to come back). Outputs posted on the engine thread are queued until the engine's ``flush`` at
    the end of its pass; posts from any other thread (a submit that fails at once) are delivered right away.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, engine: Engine) -> None:
        self.loop = loop
        self._engine = engine
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue[Any], Any]] = []
        self._scheduled = False
        engine.add_flush(self.flush)

    def post(self, queue: asyncio.Queue[Any], item: Any) -> None:
        """Queue ``item`` for ``queue`` (any thread)."""
        with self._lock:
            self._items.append((queue, item))
        if not self._engine.on_engine_thread():
            self.flush()

    def flush(self) -> None:
        """Wake the loop to deliver what was posted (once until it has run)."""
        with self._lock:
            if self._scheduled or not self._items:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            with self._lock:
                self._items.clear()
                self._scheduled = False

    def _deliver(self) -> None:
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        for queue, item in items:
            queue.put_nowait(item)


class MlxProvider(Provider):
    """Serves local MLX models through one engine thread."""

    upstream_format = None
    local = True

    def __init__(self, settings: ProviderSettings, ctx: ProviderContext) -> None:
        self.name = settings.name or "higgs"
        self.ctx = ctx
        self.settings = ctx.settings
        self.engine = Engine(**engine_options(ctx.settings.server))
        self.models: list[LoadedModel] = []
        self._by_name: dict[str, LoadedModel] = {}
        self._agents: Any = _NO_AGENTS
        #: Embedding models (``higgs_mlx.embeddings.EncoderEmbedder``) by name and alias.
        self.embedders: dict[str, Any] = {}
        self._mailbox: _Mailbox | None = None
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def assume_yes(self) -> bool:
        """Download uncached models without asking (``--yes``; ``HIGGS_YES=1``)."""
        return bool(getattr(self.settings.server, "assume_yes", False)) or _truthy(os.environ.get("HIGGS_YES"))

    async def start(self) -> None:
        """Start the engine thread and load every configured model (or the embedded default) on it."""
        self.engine.start()
        self._started = True
        entries = list(self.settings.models)
        if not entries:
            from higgs_mlx.default_model import DefaultModelMissing

            try:
                self._register(await asyncio.wrap_future(self.engine.call(self._load_default)))
            except DefaultModelMissing as err:
                # Remote-only setups must still start: serve no local model, and say how to get one.
                log.warning("%s", err)
            return
        for entry in entries:
            future = self.engine.call(functools.partial(self._load_entry, entry))
            loaded = await asyncio.wrap_future(future)
            if isinstance(loaded, LoadedModel):
                self._register(loaded)
            else:
                self._register_embedder(loaded)

    def _load_entry(self, entry: ModelSettings) -> Any:
        """A ``LoadedModel``, or an ``EncoderEmbedder`` for an embedding-model directory."""
        from higgs_mlx import embeddings

        path = resolve_model_path(entry.path, assume_yes=self.assume_yes)
        name = entry.name or entry.path
        aliases = tuple(a for a in dict.fromkeys([entry.path, str(path), path.name]) if a != name)
        if embeddings.is_embedding_model(path):
            return embeddings.EncoderEmbedder.load(path, name=name, aliases=aliases)
        lm = load_model_dir(path, self.ctx.architectures, name=name, aliases=aliases)
        self.engine.configure_model(lm, batch=entry.batch)
        warm_up(lm)
        self.engine.prepare(lm)  # check batching and trace the compiled decode step now, not at the first request
        return lm

    def _load_default(self) -> LoadedModel:
        from higgs_mlx.default_model import DEFAULT_MODEL_NAME, ensure_default_model

        path = ensure_default_model()
        lm = load_model_dir(path, self.ctx.architectures, name=DEFAULT_MODEL_NAME, aliases=(DEFAULT_ALIAS, str(path)))
        warm_up(lm)
        self.engine.prepare(lm)
        return lm

    def _register(self, lm: LoadedModel) -> None:
        for key in (lm.name, *lm.aliases):
            other = self._by_name.get(key)
            if other is not None and other is not lm:
                raise ModelLoadError(f"Two local models answer to '{key}': {other.path} and {lm.path}; "
                                     "give one of them a different name.")
            self._by_name[key] = lm
        self.models.append(lm)
        log.info("local model %s loaded from %s (%s)", lm.name, lm.path, lm.arch.name)

    def _register_embedder(self, embedder: Any) -> None:
        for key in (embedder.name, *embedder.aliases):
            if key in self._by_name or self.embedders.get(key, embedder) is not embedder:
                raise ModelLoadError(f"Two local models answer to '{key}'; give one of them a different name.")
            self.embedders[key] = embedder
        log.info("local embedding model %s loaded from %s", embedder.name, embedder.path)

    async def close(self) -> None:
        """Stop the engine thread."""
        await asyncio.to_thread(self.engine.stop)

    # -- catalogue --------------------------------------------------------------------------------
    def serves(self, model: str) -> bool:
        """Whether ``model`` is a local model's name, alias, path or HF id.

        Before ``start()`` (``higgs route`` explains without loading anything) the answer comes from the
        configuration: each ``[[models]]`` entry's name and path, or the embedded default's name and alias.
        """
        if not self._started:
            return model in self.planned_names()
        return model in self._by_name or model in self.embedders

    def planned_names(self) -> set[str]:
        """The names ``start()`` will serve, read from the configuration without loading a model."""
        entries = list(self.settings.models)
        if not entries:
            from higgs_mlx.default_model import DEFAULT_MODEL_NAME

            return {DEFAULT_MODEL_NAME, DEFAULT_ALIAS}
        return {name for entry in entries for name in (entry.name, entry.path) if name}

    async def list_models(self) -> list[ModelInfo]:
        """One entry per loaded model (aliases are not listed separately)."""
        embedders = {id(e): e for e in self.embedders.values()}.values()
        return [ModelInfo(id=lm.name, owned_by=self.name, kind="local", context_length=lm.context_length)
                for lm in self.models] + [ModelInfo(id=e.name, owned_by=self.name, kind="local",
                                                    context_length=e.max_length) for e in embedders]

    def state(self) -> dict[str, Any]:
        """Engine numbers for ``/metrics``."""
        return {**self.engine.state(), "models": [lm.name for lm in self.models]}

    def model(self, name: str) -> LoadedModel:
        """The loaded model for ``name`` or a 404 listing what is available."""
        lm = self._by_name.get(name)
        if lm is None:
            if name in self.embedders:
                raise InvalidRequestError(f"'{name}' is an embedding model; it serves /v1/embeddings only.",
                                          param="model", code="embedding_model")
            raise UnknownModelError(name, [m.name for m in self.models])
        return lm

    async def embed(self, request: EmbeddingRequest, call: CallContext) -> EmbeddingResponse:
        """Embed on the engine thread: an embedding model, or a chat model's mean-pooled hidden states."""
        from higgs_mlx import embeddings

        target = self.embedders.get(request.model) or embeddings.decoder_embedder(self.model(request.model))
        future = self.engine.call(functools.partial(embeddings.embed_request, target, request))
        return await asyncio.wrap_future(future)

    # -- helpers ----------------------------------------------------------------------------------
    def agents(self) -> ModuleType | None:
        """The agents extension module, imported once."""
        if self._agents is _NO_AGENTS:
            self._agents = _agents_module()
        return self._agents  # type: ignore[no-any-return]

    def _max_tokens(self, requested: int | None, prompt_len: int, lm: LoadedModel) -> int:
        cap = self.settings.server.max_tokens
        if requested is not None and requested < 1:
            raise InvalidRequestError("max_tokens must be at least 1", param="max_tokens")
        limit = min(requested or cap, cap)
        if lm.context_length:
            if prompt_len >= lm.context_length:
                raise ApiError(400, "context_length_exceeded",
                               f"The prompt is {prompt_len} tokens, but '{lm.name}' has a context of "
                               f"{lm.context_length} tokens.", param="messages", code="context_length_exceeded")
            limit = min(limit, lm.context_length - prompt_len)
        return limit

    def _job_kwargs(self, sampling: Sampling, lm: LoadedModel) -> dict[str, Any]:
        from higgs_mlx.sampling import RequestSampler, make_processors, validate

        validate(sampling, int(lm.config.get("vocab_size") or len(lm.tokenizer)))
        # Fields the client left out: the model's generation_config.json suggestion, else greedy (as
        # mlx_lm.server does), so a bare request to a small local model answers deterministically.
        missing = {k: v for k, v in lm.sampling_defaults.items() if getattr(sampling, k, None) is None}
        if missing:
            sampling = sampling.model_copy(update=missing)
        return {
            "sampler": RequestSampler(sampling, default_temperature=0.0),
            "processors": make_processors(sampling),
            "top_logprobs": (sampling.top_logprobs or 0) if sampling.logprobs else None,
        }

    async def _run(self, jobs: list[Job], arrival: Arrival | None = None) -> AsyncIterator[tuple[int, EngineOutput]]:
        """Submit ``jobs`` (their ``arrival`` released with the last) and yield ``(job index, output)`` until
        each is done; cancel them on exit."""
        loop = asyncio.get_running_loop()
        if self._mailbox is None or self._mailbox.loop is not loop:
            self._mailbox = _Mailbox(loop, self.engine)
        mailbox = self._mailbox
        inbox: asyncio.Queue[tuple[int, EngineOutput]] = asyncio.Queue()

        def emitter(index: int) -> Any:
            def emit(item: EngineOutput) -> None:
                mailbox.post(inbox, (index, item))
            return emit

        for index, job in enumerate(jobs):
            job.emit = emitter(index)
            self.engine.submit(job, arrival if index == len(jobs) - 1 else None)  # released with the last
        open_jobs = len(jobs)
        try:
            while open_jobs:
                index, item = await inbox.get()
                if isinstance(item, (Done, Failed)):
                    open_jobs -= 1
                yield index, item
        finally:
            for job in jobs:
                job.cancel()

    # -- chat -------------------------------------------------------------------------------------
    def _prepare_chat(self, request: ChatRequest) -> tuple[LoadedModel, str, list[int]]:
        """Model, rendered prompt text and its token ids (runs in a worker thread)."""
        lm = self.model(request.model)
        if request.n != 1:
            raise InvalidRequestError("Local models generate one choice per request (n must be 1).", param="n")
        agents = self.agents()
        options = None
        if agents is not None and hasattr(agents, "template_options"):
            options = agents.template_options(request, lm.arch)
        text = prompts.render_chat(request, lm, options)
        return lm, text, prompts.encode_text(text, lm)

    def _output_parser(self, request: ChatRequest, lm: LoadedModel, prompt: str) -> OutputParser:
        agents = self.agents()
        if agents is not None and hasattr(agents, "make_output_parser"):
            parser = agents.make_output_parser(request, lm.arch, lm.tokenizer, prompt=prompt)
            if parser is not None:
                return parser  # type: ignore[no-any-return]
        return PlainTextParser()

    def _extra_processors(self, request: ChatRequest, lm: LoadedModel, prompt: str, max_tokens: int) -> list[Any]:
        agents = self.agents()
        if agents is not None and hasattr(agents, "make_logits_processors"):
            return list(agents.make_logits_processors(request, lm.tokenizer, arch=lm.arch, prompt=prompt,
                                                      max_tokens=max_tokens) or [])
        return []

    async def count_tokens(self, request: ChatRequest, call: CallContext) -> int:
        """The exact number of tokens of the rendered prompt."""
        if vision.has_images(request):
            return await asyncio.to_thread(vision.count_tokens, self, request)
        _, _, ids = await asyncio.to_thread(self._prepare_chat, request)
        return len(ids)

    def chat_stream(self, request: ChatRequest, call: CallContext) -> AsyncIterator[StreamEvent]:
        """Generate a chat answer as canonical stream events."""
        return self._chat_events(request, None)

    async def _chat_events(self, request: ChatRequest,
                           logprobs: list[dict[str, Any]] | None) -> AsyncIterator[StreamEvent]:
        embeds = None
        images = vision.has_images(request)
        # text prompts of a burst are prefilled together (images are prefilled alone: not announced)
        with contextlib.nullcontext() if images else self.engine.expect() as arrival:
            if images:  # fetched, rendered and embedded by higgs_mlx.vision
                lm, prepared = await vision.prepare_chat(self, request)
                text, ids, embeds = prepared.text, prepared.ids, prepared.embeds
            else:
                lm, text, ids = await asyncio.to_thread(self._prepare_chat, request)
            max_tokens = self._max_tokens(request.max_tokens, len(ids), lm)
            kwargs = self._job_kwargs(request.sampling, lm)
            # Compiling the index of a new schema takes seconds: keep it off the event loop (the processors
            # touch MLX only when called, on the engine thread).
            kwargs["processors"] += await asyncio.to_thread(self._extra_processors, request, lm, text, max_tokens)
            job = Job(lm=lm, prompt=ids, max_tokens=max_tokens, stops=list(request.stop), emit=lambda _: None,
                      ignore_eos=_ignore_eos(request.extra), embeds=embeds, **kwargs)
            parser = self._output_parser(request, lm, text)
            builder = EventBuilder()
            yield StreamStart(id=new_id(), model=request.model, usage=Usage(input_tokens=len(ids)))
            async for _, item in self._run([job], arrival):
                if isinstance(item, Chunk):
                    if logprobs is not None and item.logprobs:
                        logprobs.extend(item.logprobs)
                    for event in builder.push(parser.feed(item.text)) if item.text else ():
                        yield event
                elif isinstance(item, Done):
                    for event in builder.push(parser.finish()):
                        yield event
                    usage = Usage(input_tokens=item.prompt_tokens, output_tokens=item.output_tokens,
                                  cached_tokens=item.cached_tokens)
                    for event in builder.finish(item.reason, usage, item.stop_sequence):
                        yield event
                    return
                else:
                    yield StreamError(error=_error_info(item.error))
                    return

    async def chat(self, request: ChatRequest, call: CallContext) -> ChatResponse:
        """Generate a full chat answer (the stream, folded)."""
        events: list[StreamEvent] = []
        logprobs: list[dict[str, Any]] = []
        async for event in self._chat_events(request, logprobs):
            if isinstance(event, StreamError):
                raise ApiError.from_info(event.error)
            events.append(event)
        try:
            response = accumulate(events, request.model)
        except ValueError as err:  # tool arguments that are not JSON (the agents parser should prevent it)
            raise ApiError(500, "api_error", f"The local model produced tool-call arguments that are not valid "
                           f"JSON: {err}", code="invalid_tool_arguments") from err
        if logprobs:
            response.extra["logprobs"] = {"content": logprobs}
        return response

    # -- completions ------------------------------------------------------------------------------
    async def _completion_jobs(self, request: CompletionRequest) -> tuple[LoadedModel, list[Job], list[str]]:
        lm = self.model(request.model)
        encoded = await asyncio.to_thread(prompts.encode_completion, request, lm)
        if request.n < 1:
            raise InvalidRequestError("n must be at least 1", param="n")
        jobs: list[Job] = []
        echoes: list[str] = []
        for ids in encoded:
            for _ in range(request.n):
                jobs.append(Job(lm=lm, prompt=ids, max_tokens=self._max_tokens(request.max_tokens, len(ids), lm),
                                stops=list(request.stop), emit=lambda _: None,
                                ignore_eos=_ignore_eos(request.extra), **self._job_kwargs(request.sampling, lm)))
                echoes.append(lm.tokenizer.decode(ids) if request.echo else "")
        return lm, jobs, echoes

    async def complete_stream(self, request: CompletionRequest, call: CallContext) -> AsyncIterator[StreamEvent]:
        """Text completion as a stream; ``BlockDelta.index`` is the choice index."""
        with self.engine.expect() as arrival:
            _, jobs, echoes = await self._completion_jobs(request)
            yield StreamStart(id=new_id("cmpl"), model=request.model,
                              usage=Usage(input_tokens=sum(len(j.prompt) for j in jobs)))
            started: set[int] = set()
            reasons: list[StopReason | None] = [None] * len(jobs)
            stop_seq: str | None = None
            usage = Usage()
            async for index, item in self._run(jobs, arrival):
                if isinstance(item, Failed):
                    yield StreamError(error=_error_info(item.error))
                    return
                if index not in started:
                    started.add(index)
                    yield BlockStart(index=index, block=TextBlock(text=""))
                    if echoes[index]:
                        yield BlockDelta(index=index, delta=TextDelta(text=echoes[index]))
                if isinstance(item, Chunk) and item.text:
                    yield BlockDelta(index=index, delta=TextDelta(text=item.text))
                elif isinstance(item, Done):
                    reasons[index] = item.reason
                    stop_seq = stop_seq or item.stop_sequence
                    usage.input_tokens += item.prompt_tokens
                    usage.output_tokens += item.output_tokens
                    usage.cached_tokens += item.cached_tokens
                    yield BlockStop(index=index)
        reason = next((r for r in reasons if r is not None), "end_turn")
        yield StreamFinish(stop_reason=reason, stop_sequence=stop_seq, usage=usage)

    async def complete(self, request: CompletionRequest, call: CallContext) -> CompletionResponse:
        """Full text completion, one choice per prompt x ``n``."""
        with self.engine.expect() as arrival:
            _, jobs, echoes = await self._completion_jobs(request)
            texts = list(echoes)
            reasons: list[StopReason | None] = ["end_turn"] * len(jobs)
            usage = Usage()
            async for index, item in self._run(jobs, arrival):
                if isinstance(item, Failed):
                    raise ApiError.from_info(_error_info(item.error))
                if isinstance(item, Chunk):
                    texts[index] += item.text
                elif isinstance(item, Done):
                    reasons[index] = item.reason
                    usage.input_tokens += item.prompt_tokens
                    usage.output_tokens += item.output_tokens
                    usage.cached_tokens += item.cached_tokens
        return CompletionResponse(id=new_id("cmpl"), model=request.model, usage=usage,
                                  choices=[CompletionChoice(index=i, text=t, stop_reason=r)
                                           for i, (t, r) in enumerate(zip(texts, reasons, strict=True))])


def engine_options(server: Any) -> dict[str, Any]:
    """``Engine`` keyword arguments from ``[server]``: ``batch`` (``--batch``), and the optional keys
    ``max_batch``, ``max_queue``, ``prefill_chunk``, ``interleave_chunk``, ``interleave_ms``, ``gather_ms``,
    ``group_prefill``, ``compiled_decode``, ``attention_kernel`` and ``prefill_padding`` (true/false) and
    ``prefix_cache_mb`` (0 turns the prefix cache off)."""
    from higgs_mlx import engine as engine_mod

    options: dict[str, Any] = {}
    if getattr(server, "batch", None) is not None:
        options["batch"] = bool(server.batch)
    for key in ("max_batch", "max_queue", "prefill_chunk", "interleave_chunk", "group_prefill"):
        value = getattr(server, key, None)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "max_queue" else 1):
                raise ModelLoadError(f"[server] {key} must be a positive integer, not {value!r}")
            options[key] = value
    for key in ("interleave_ms", "gather_ms"):
        ms = getattr(server, key, None)
        if ms is not None:
            if not isinstance(ms, (int, float)) or isinstance(ms, bool) or ms < 0:
                raise ModelLoadError(f"[server] {key} must be a number >= 0 (milliseconds), not {ms!r}")
            options[key] = float(ms)
    for key in ("compiled_decode", "attention_kernel", "prefill_padding"):
        flag = getattr(server, key, None)
        if flag is not None:
            if not isinstance(flag, bool):
                raise ModelLoadError(f"[server] {key} must be true or false, not {flag!r}")
            options[key] = flag
    mb = getattr(server, "prefix_cache_mb", None)
    if mb is not None:
        if not isinstance(mb, (int, float)) or isinstance(mb, bool) or mb < 0:
            raise ModelLoadError(f"[server] prefix_cache_mb must be a number >= 0 (MiB), not {mb!r}")
        options["prefix_cache_bytes"] = int(mb * (1 << 20))
    else:
        options["prefix_cache_bytes"] = engine_mod.DEFAULT_PREFIX_CACHE_BYTES
    return options


def _ignore_eos(extra: dict[str, Any]) -> bool:
    """vLLM's ``ignore_eos`` request extension (benchmarks use it to generate exactly ``max_tokens``)."""
    return extra.get("ignore_eos") is True


def _error_info(error: BaseException) -> ErrorInfo:
    if isinstance(error, ApiError):
        return error.info
    return ErrorInfo(status=500, kind="api_error", message=f"Local generation failed: {type(error).__name__}: {error}")


