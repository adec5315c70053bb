"""Timings of streams and their summaries. Every timestamp is time.monotonic() (CLOCK_MONOTONIC, shared
by all processes on the machine), so a worker process's timestamps compare with ours."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StreamTiming:
    submitted: float
    token_times: tuple[float, ...]  # when each generated token reached the client
    cached_tokens: int = 0
    text: str = ""

    @property
    def tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.submitted

    @property
    def finished(self) -> float:
        return self.token_times[-1]

    @property
    def inter_token(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]

    @property
    def decode_rate(self) -> float:
        """Tokens per second after the first one."""
        span = self.token_times[-1] - self.token_times[0]
        return (self.tokens - 1) / span if span > 0 else 0.0


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def aggregate_rate(streams: Sequence[StreamTiming]) -> float:
    """Generated tokens per second over the whole run (first submission to last token)."""
    start = min(s.submitted for s in streams)
    end = max(s.finished for s in streams)
    return sum(s.tokens for s in streams) / (end - start)
