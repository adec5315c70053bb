"""What the benchmark measures. Each scenario runs every subject on the same token ids, repeats, and
interleaves the subjects (A B C, then B C A, ...) so that drift on a shared machine hits them all.
Every prompt starts with its own marker, so no run can reuse another run's cached prefix."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer

from bench.subjects import Subject
from bench.timing import StreamTiming, aggregate_rate, median, percentile

Progress = Callable[[str], None]
_markers = itertools.count(1)


@dataclass(frozen=True)
class Plan:
    decode_tokens: int
    decode_reps: int
    ttft_lengths: tuple[int, ...]
    ttft_reps: int
    concurrency: tuple[int, ...]
    concurrency_tokens: int
    concurrency_reps: int
    conversation_turns: int
    turn_tokens: int

    @staticmethod
    def full() -> Plan:
        return Plan(128, 6, (128, 512), 3, (1, 2, 4, 8, 16), 128, 2, 6, 48)

    @staticmethod
    def quick() -> Plan:
        return Plan(32, 1, (128,), 1, (1, 4), 24, 1, 3, 16)


class Prompts:
    """Token-id prompts of a given length cut from a text, each behind a unique marker."""

    def __init__(self, tokenizer: Tokenizer, text: str) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = tokenizer.encode(text, add_special_tokens=False).ids

    def make(self, length: int) -> list[int]:
        marker = self.tokenizer.encode(f"Request {next(_markers)}.\n", add_special_tokens=False).ids
        body = (self.ids * (length // max(1, len(self.ids)) + 2))[: max(0, length - len(marker))]
        return marker + body

    def turn(self, n: int) -> list[int]:
        return self.tokenizer.encode(
            f"\nQuestion {n}: and what happened next?\nAnswer:", add_special_tokens=False
        ).ids


def rotations(subjects: Sequence[Subject], reps: int) -> list[list[Subject]]:
    return [list(subjects[i % len(subjects) :]) + list(subjects[: i % len(subjects)]) for i in range(reps)]


async def single_stream(
    subjects: Sequence[Subject], prompts: Prompts, plan: Plan, progress: Progress
) -> dict[str, Any]:
    runs: dict[str, list[StreamTiming]] = {s.name: [] for s in subjects}
    for order in rotations(subjects, plan.decode_reps):
        for subject in order:
            progress(f"single-stream decode: {subject.name}")
            runs[subject.name].append(await subject.stream(prompts.make(64), plan.decode_tokens))
    return {
        name: {
            "decode_tok_s": median([r.decode_rate for r in rs]),
            "decode_tok_s_reps": [r.decode_rate for r in rs],  # one per repetition, in order: pairs by rep
            "itl_p50_ms": 1000 * median([x for r in rs for x in r.inter_token]),
            "itl_p95_ms": 1000 * percentile([x for r in rs for x in r.inter_token], 95),
        }
        for name, rs in runs.items()
    }


async def time_to_first_token(
    subjects: Sequence[Subject], prompts: Prompts, plan: Plan, progress: Progress
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for length in plan.ttft_lengths:
        runs: dict[str, list[float]] = {s.name: [] for s in subjects}
        for order in rotations(subjects, plan.ttft_reps):
            for subject in order:
                progress(f"time to first token, {length}-token prompt: {subject.name}")
                runs[subject.name].append((await subject.stream(prompts.make(length), 2)).ttft)
        out[str(length)] = {name: {"ttft_ms": 1000 * median(v)} for name, v in runs.items()}
    return out


async def concurrency(
    subjects: Sequence[Subject], prompts: Prompts, plan: Plan, progress: Progress
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in plan.concurrency:
        runs: dict[str, list[list[StreamTiming]]] = {s.name: [] for s in subjects}
        for order in rotations(subjects, plan.concurrency_reps):
            for subject in order:
                progress(f"{n} concurrent streams: {subject.name}")
                streams = await asyncio.gather(
                    *(subject.stream(prompts.make(64), plan.concurrency_tokens) for _ in range(n))
                )
                runs[subject.name].append(list(streams))
        out[str(n)] = {
            name: {
                "aggregate_tok_s": median([aggregate_rate(r) for r in rs]),
                "ttft_p50_ms": 1000 * median([s.ttft for r in rs for s in r]),
                "ttft_p95_ms": 1000 * percentile([s.ttft for r in rs for s in r], 95),
                "itl_p50_ms": 1000 * median([x for r in rs for s in r for x in s.inter_token]),
                "itl_p95_ms": 1000 * percentile([x for r in rs for s in r for x in s.inter_token], 95),
                "itl_samples_ms": [1000 * x for x in [x for s in rs[-1] for x in s.inter_token][:2000]],
            }
            for name, rs in runs.items()
        }
    return out


async def conversation(
    subjects: Sequence[Subject], prompts: Prompts, plan: Plan, progress: Progress
) -> dict[str, Any]:
    """A multi-turn conversation resent whole each turn (stateless clients): prefix reuse at work."""
    out: dict[str, Any] = {}
    for subject in subjects:
        history = prompts.make(96)
        ttfts, cached = [], []
        for turn in range(plan.conversation_turns):
            progress(f"{plan.conversation_turns}-turn conversation, turn {turn + 1}: {subject.name}")
            history = history + prompts.turn(turn)
            timing = await subject.stream(history, plan.turn_tokens)
            ttfts.append(timing.ttft)
            cached.append(timing.cached_tokens)
            # A stateless client resends the reply as text: its ids are re-tokenized, as they would be.
            history = history + prompts.tokenizer.encode(timing.text, add_special_tokens=False).ids
        out[subject.name] = {
            "ttft_ms_per_turn": [1000 * t for t in ttfts],
            "ttft_ms_later_turns": 1000 * median(ttfts[1:]),
            "cached_tokens_per_turn": cached,
            "final_prompt_tokens": len(history),
        }
    return out
