"""One request's engine events gathered into a complete result (the unary RPCs), and the facts every
response carries (id, model, creation time). No protobuf here."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from service.engine.events import (
    ChoiceFinished,
    EngineEvent,
    FinishReason,
    RequestFailed,
    RequestFinished,
    Timings,
    TokenEvent,
    Usage,
)
from service.errors import EngineFailure
from service.sampling import TokenLogprobs

# A request's generation ends this long before its gRPC deadline (a fraction of the time left, within
# bounds) so that the partial answer, FINISH_REASON_TIME_LIMIT, still reaches the caller in time.
DEADLINE_MARGIN_FRACTION = 0.2
DEADLINE_MARGIN_MIN_S = 0.05
DEADLINE_MARGIN_MAX_S = 2.0


@dataclass(frozen=True)
class CallInfo:
    """What every response and chunk of one call repeats."""

    id: str  # e.g. chatcmpl-5f0c..., also the engine's request id
    model: str
    created: int  # seconds since the Unix epoch
    fingerprint: str
    arrived: float = field(default_factory=time.monotonic)

    @staticmethod
    def new(prefix: str, model: str, fingerprint: str) -> CallInfo:
        return CallInfo(f"{prefix}-{uuid.uuid4().hex}", model, int(time.time()), fingerprint)


def engine_deadline(time_remaining: float | None, *, now: float | None = None) -> float | None:
    """The engine's deadline (time.monotonic() seconds) for a call with `time_remaining` seconds left."""
    if time_remaining is None:
        return None
    margin = min(max(time_remaining * DEADLINE_MARGIN_FRACTION, DEADLINE_MARGIN_MIN_S), DEADLINE_MARGIN_MAX_S)
    return (time.monotonic() if now is None else now) + max(time_remaining - margin, 0.0)


@dataclass
class ChoiceOutput:
    """Everything one choice produced: its text, its tokens' logprobs and how it ended."""

    index: int
    parts: list[str] = field(default_factory=list)
    logprobs: list[tuple[int, TokenLogprobs]] = field(default_factory=list)  # (token id, logprobs)
    reason: FinishReason | None = None
    matched_stop: str | None = None
    matched_token_id: int | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, event: TokenEvent | ChoiceFinished) -> None:
        if isinstance(event, TokenEvent):
            self.parts.append(event.text)
            self.logprobs.extend(zip(event.token_ids, event.logprobs, strict=False))
        else:
            self.parts.append(event.text)
            self.reason = event.reason
            self.matched_stop = event.matched_stop
            self.matched_token_id = event.matched_token_id


@dataclass(frozen=True)
class GenerationOutput:
    choices: tuple[ChoiceOutput, ...]
    usage: Usage
    timings: Timings


async def collect(events: AsyncIterator[EngineEvent], n: int) -> GenerationOutput:
    """Run a request to its end. A RequestFailed raises its error."""
    choices = tuple(ChoiceOutput(index) for index in range(n))
    async for event in events:
        if isinstance(event, TokenEvent | ChoiceFinished):
            choices[event.index].add(event)
        elif isinstance(event, RequestFinished):
            return GenerationOutput(choices, event.usage, event.timings)
        elif isinstance(event, RequestFailed):
            raise event.error
    raise EngineFailure("the engine's event stream ended without RequestFinished or RequestFailed")
