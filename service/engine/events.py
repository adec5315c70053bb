"""What goes into the engine (GenerationRequest) and what comes out (events), as plain dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from service.errors import ParleyError
from service.sampling import SamplingParams, TokenLogprobs


class FinishReason(StrEnum):
    STOP = "stop"  # an end-of-sequence token, a stop token id or a stop string
    LENGTH = "length"  # max_tokens reached
    CONTEXT_LENGTH = "context_length"  # the context window (or the KV slot) is full
    CANCELLED = "cancelled"
    TIME_LIMIT = "time_limit"  # the request's deadline passed while it was generating


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams  # validated; carries max_tokens, stop strings and stop token ids
    n: int = 1  # choices sharing one prefill
    priority: int = 0  # higher runs first; FIFO within a priority
    deadline: float | None = None  # time.monotonic() seconds: queued past it → never runs
    skip_special_tokens: bool = True  # leave control tokens out of the text


@dataclass(frozen=True)
class TokenEvent:
    """New output of one choice: the text it adds (possibly empty while a stop string may still match)."""

    request_id: str
    index: int
    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[TokenLogprobs, ...]  # one per token id when the request asked for logprobs


@dataclass(frozen=True)
class ChoiceFinished:
    request_id: str
    index: int
    reason: FinishReason
    matched_stop: str | None  # the stop string that ended it, if one did
    text: str  # held-back text released at the end (never includes a matched stop string)
    matched_token_id: int | None = None  # the stop token (end-of-sequence or requested) that ended it


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int  # over all choices
    cached_tokens: int  # prompt tokens whose K/V were reused, not prefilled

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    queued_s: float  # submitted → admitted
    prefill_s: float  # admitted → first token sampled
    time_to_first_token_s: float  # submitted → first token
    total_s: float  # submitted → finished
    decode_tokens_per_s: float  # tokens after the first, per second of decoding (per choice, mean)


@dataclass(frozen=True)
class RequestFinished:
    request_id: str
    usage: Usage
    timings: Timings


@dataclass(frozen=True)
class RequestFailed:
    request_id: str
    error: ParleyError


EngineEvent = TokenEvent | ChoiceFinished | RequestFinished | RequestFailed
