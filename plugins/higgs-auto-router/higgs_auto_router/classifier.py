"""Running the classification on the local engine (``higgs-mlx``).

The classifier model is one of the local provider's loaded models. One classification is one engine
``Job``: the prompt (``prompt.build_prompt`` in a user turn, rendered with the model's chat template, then
the answer's opening ``{"route": "``), greedy sampling and - in ``constrained`` mode - an outlines-core
``RegexConstraint`` over exactly the valid answers, so whatever the weights, the generated text is a
candidate name or ``other``. Generation stops as soon as the tokens decoded so far start exactly one valid
answer: the constraint can only complete that one, so its remaining tokens are not generated (with a
byte-level tokenizer, ``code_review`` beside ``code_generation`` is decided after ``code_r``, not after
eleven tokens), and no end-of-sequence step is waited for. Leaving ``classify`` early - a timeout
cancelling the awaiting task - cancels the job, and the engine drops it at its next step.

mlx and higgs-mlx are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from higgs.errors import ConfigError

from higgs_auto_router.prompt import (
    ANSWER_PREFIX,
    Candidate,
    answer_regex,
    answers,
    build_prompt,
    parse_answer,
    resolved,
    trim_history,
)

log = logging.getLogger("higgs.auto_router")

AnswerMode = Literal["constrained", "lenient"]
#: Most tokens a lenient (unconstrained) answer may take.
LENIENT_MAX_TOKENS = 24


@dataclass
class Verdict:
    """What one classification produced."""

    route: str | None
    answer: str
    prompt_tokens: int
    output_tokens: int
    seconds: float


@dataclass
class _Prepared:
    lm: Any
    ids: list[int]
    max_tokens: int
    processors: list[Callable[[Any, Any], Any]] = field(default_factory=list)


class _TokenizerCounter:
    """``prompt.TokenCounter`` over an mlx-lm tokenizer wrapper."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids))


class MlxClassifier:
    """Classifies conversations with one model of the local MLX provider.

    Args:
        provider: the started local provider (``higgs_mlx.provider.MlxProvider``).
        model: the classifier's name, alias or path as the provider knows it.
        mode: ``constrained`` (only valid answers can be decoded) or ``lenient`` (free text, parsed).
        history_tokens: the conversation budget, in the classifier's tokens.
        extra_processors: logits processors run before the constraint (tests use one to slow steps down).
    """

    def __init__(self, provider: Any, model: str, *, mode: AnswerMode = "constrained", history_tokens: int = 2048,
                 extra_processors: Sequence[Callable[[Any, Any], Any]] = ()) -> None:
        for needed in ("engine", "model"):
            if not hasattr(provider, needed):
                raise ConfigError(f"[auto_router] classifies with the local MLX engine, but the local provider "
                                  f"'{getattr(provider, 'name', provider)}' is a {type(provider).__name__}; "
                                  "install higgs-mlx")
        self.provider = provider
        self.model = model
        self.mode: AnswerMode = mode
        self.history_tokens = history_tokens
        self.extra_processors = list(extra_processors)

    def loaded(self) -> bool:
        """Whether the provider has the classifier model loaded (``serves()`` may answer from the
        configuration before the provider starts, so ask for the loaded model itself)."""
        try:
            self.provider.model(self.model)
        except Exception:
            return False
        return True

    # -- off the event loop -----------------------------------------------------------------------
    def _prepare(self, candidates: Sequence[Candidate], items: Sequence[dict[str, str]]) -> _Prepared:
        """Trim, render and encode the prompt; build the constraint (tokenizer work, in a worker thread)."""
        from higgs.messages import ChatRequest, Message, Reasoning, TextBlock
        from higgs_mlx import prompt as prompts

        lm = self.provider.model(self.model)
        counter = _TokenizerCounter(lm.tokenizer)
        shown = trim_history(items, counter, self.history_tokens)
        request = ChatRequest(model=self.model, reasoning=Reasoning(enabled=False), messages=[
            Message(role="user", content=[TextBlock(text=build_prompt(candidates, shown))])])
        text = prompts.render_chat(request, lm) + ANSWER_PREFIX
        ids = prompts.encode_text(text, lm)
        processors = list(self.extra_processors)
        if self.mode == "constrained":
            from higgs_mlx.agents.constrain import RegexConstraint, compile_regex

            longest = max(len(counter.encode(a)) for a in answers(candidates))
            max_tokens = longest + 2
            processors.append(RegexConstraint(compile_regex(lm.tokenizer, answer_regex(candidates)),
                                              max_tokens=max_tokens))
        else:
            max_tokens = max(LENIENT_MAX_TOKENS, max(len(counter.encode(a)) for a in answers(candidates)) + 4)
        return _Prepared(lm, ids, max_tokens, processors)

    # -- on the event loop ------------------------------------------------------------------------
    async def classify(self, candidates: Sequence[Candidate], items: Sequence[dict[str, str]]) -> Verdict:
        """Ask the model which candidate fits ``items``; cancelling the caller cancels the generation."""
        from higgs.messages import Sampling
        from higgs_mlx.engine import Chunk, Done, Failed, Job
        from higgs_mlx.sampling import RequestSampler

        started = time.perf_counter()
        prepared = await asyncio.to_thread(self._prepare, candidates, items)
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Any] = asyncio.Queue()

        def emit(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is waiting for this answer any more
                pass

        stops = [] if self.mode == "constrained" else ['"', "\n"]
        # top_logprobs=0 makes the engine report every token as it is sampled, so a complete answer is
        # seen at once (the streaming detokenizer may hold a word back until the next one starts)
        job = Job(lm=prepared.lm, prompt=prepared.ids, max_tokens=prepared.max_tokens,
                  sampler=RequestSampler(Sampling(temperature=0.0)), emit=emit, processors=prepared.processors,
                  stops=stops, top_logprobs=0)
        valid = answers(candidates)
        tokens: list[int] = []
        text = streamed = ""
        self.provider.engine.submit(job)
        try:
            while True:
                item = await inbox.get()
                if isinstance(item, Failed):
                    raise item.error
                if isinstance(item, Chunk):
                    tokens.extend(item.tokens)
                    streamed += item.text
                    if self.mode == "constrained" and item.tokens:
                        text = prepared.lm.tokenizer.decode(tokens)
                        reachable = [a for a in valid if a.startswith(text)]
                        if len(reachable) == 1:  # the constraint can only finish this answer
                            text = reachable[0]
                            break
                elif isinstance(item, Done):
                    text = streamed  # the engine's own detokenization: complete, stop strings removed
                    break
        finally:
            job.cancel()
        route = resolved(text, candidates) if self.mode == "constrained" else parse_answer(text, candidates)
        return Verdict(route=route, answer=text, prompt_tokens=len(prepared.ids), output_tokens=len(tokens),
                       seconds=time.perf_counter() - started)
