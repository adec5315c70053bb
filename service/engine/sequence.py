"""The state of one request inside the engine and of each of its choices (one KV slot each)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from tokenizers import Tokenizer

from service.engine.events import (
    ChoiceFinished,
    EngineEvent,
    FinishReason,
    GenerationRequest,
    RequestFinished,
    Timings,
    TokenEvent,
    Usage,
)
from service.sampling import SamplingParams, SequenceSampling, TokenLogprobs
from service.text import IncrementalDetokenizer, TextStream

EventSink = Callable[[EngineEvent], None]

_SEED_STRIDE = 0x9E3779B97F4A7C15  # spreads choice seeds apart (golden-ratio increment)


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Choice i of a seeded request samples with its own derived seed, so choices differ but the whole
    request stays reproducible."""
    if index == 0 or params.seed is None:
        return params
    return replace(params, seed=(params.seed + index * _SEED_STRIDE) % 2**64)


class Choice:
    """One output sequence. `tokens` are the prompt then every generated token; the first `n_cached`
    of them have their K/V in the slot. `pending` is the next token a decode step feeds the model:
    the prompt's last token at first (see Engine._prefill_step), then each newly sampled one."""

    def __init__(
        self,
        owner: ActiveRequest,
        index: int,
        sampling: SequenceSampling,
        text: TextStream,
        stop_ids: frozenset[int],
    ) -> None:
        self.owner = owner
        self.stop_ids = stop_ids  # the model's end-of-sequence ids and the request's stop token ids
        self.index = index
        self.sampling = sampling
        self.text = text
        self.slot = -1
        self.tokens: list[int] = list(owner.request.prompt_ids)
        self.n_cached = 0
        self.pending: int | None = None
        self.generated = 0
        self.finished = False
        self.first_token_at: float | None = None
        self.finished_at: float | None = None

    @property
    def cached_tokens(self) -> Sequence[int]:
        return self.tokens[: self.n_cached]

    @property
    def total_tokens(self) -> int:
        return len(self.tokens)

    def accept(self, token: int, logprobs: TokenLogprobs | None, capacity: int) -> None:
        """Take a newly sampled token: emit its text, and finish the choice if it ends here."""
        now = time.monotonic()
        if self.first_token_at is None:
            self.first_token_at = now
        self.generated += 1
        self.tokens.append(token)
        self.pending = token
        params = self.sampling.params
        owner = self.owner
        if token in self.stop_ids:
            self.finish(FinishReason.STOP, now, matched_token_id=token)
            return
        delta = self.text.push(token)
        owner.emit(
            TokenEvent(
                owner.request.request_id, self.index, (token,), delta.text, (logprobs,) if logprobs else ()
            )
        )
        if delta.stop is not None:
            self.finish(FinishReason.STOP, now, matched_stop=delta.stop)
        elif params.max_tokens is not None and self.generated >= params.max_tokens:
            self.finish(FinishReason.LENGTH, now)
        elif self.total_tokens >= capacity:
            self.finish(FinishReason.CONTEXT_LENGTH, now)

    def finish(
        self,
        reason: FinishReason,
        now: float,
        matched_stop: str | None = None,
        matched_token_id: int | None = None,
    ) -> None:
        if self.finished:
            return
        self.finished = True
        self.finished_at = now
        text = ""
        if matched_stop is None:  # release held-back text; a stop string may still complete in it
            tail = self.text.finish()
            text = tail.text
            if tail.stop is not None:
                reason, matched_stop = FinishReason.STOP, tail.stop
        self.owner.emit(
            ChoiceFinished(
                self.owner.request.request_id, self.index, reason, matched_stop, text, matched_token_id
            )
        )


@dataclass
class ActiveRequest:
    request: GenerationRequest
    sink: EventSink
    submitted_at: float
    admitted_at: float | None = None
    cached_prompt_tokens: int = 0
    prefilled: int = 0  # prompt tokens whose K/V are in choice 0's slot
    choices: list[Choice] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False  # the terminal event (RequestFinished or RequestFailed) was sent

    def emit(self, event: EngineEvent) -> None:
        if not self.done:
            self.sink(event)

    def make_choices(self, tokenizer: Tokenizer, end_token_ids: frozenset[int]) -> None:
        request = self.request
        for index in range(request.n):
            params = choice_params(request.sampling, index)
            sampling = SequenceSampling(params, prompt_ids=request.prompt_ids, end_token_ids=end_token_ids)
            detokenizer = IncrementalDetokenizer(
                tokenizer, prompt_ids=request.prompt_ids, skip_special_tokens=request.skip_special_tokens
            )
            text = TextStream(detokenizer, params.stop, min_tokens=params.min_tokens)
            stop_ids = end_token_ids | frozenset(params.stop_token_ids)
            self.choices.append(Choice(self, index, sampling, text, stop_ids))

    def complete_if_finished(self, now: float) -> bool:
        """Send RequestFinished once every choice has finished (the engine calls this after it has
        released their slots, so a client that sees it can count on the capacity)."""
        if self.done or not self.choices or not all(c.finished for c in self.choices):
            return self.done
        self.emit(RequestFinished(self.request.request_id, self.usage(), self.timings(now)))
        self.done = True
        return True

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=len(self.request.prompt_ids),
            completion_tokens=sum(c.generated for c in self.choices),
            cached_tokens=self.cached_prompt_tokens,
        )

    def timings(self, now: float) -> Timings:
        admitted = self.admitted_at if self.admitted_at is not None else now
        firsts = [c.first_token_at for c in self.choices if c.first_token_at is not None]
        first = min(firsts) if firsts else now
        rates = [
            (c.generated - 1) / (c.finished_at - c.first_token_at)
            for c in self.choices
            if c.first_token_at is not None and c.finished_at is not None and c.finished_at > c.first_token_at
        ]
        return Timings(
            queued_s=admitted - self.submitted_at,
            prefill_s=first - admitted,
            time_to_first_token_s=first - self.submitted_at,
            total_s=now - self.submitted_at,
            decode_tokens_per_s=sum(rates) / len(rates) if rates else 0.0,
        )
