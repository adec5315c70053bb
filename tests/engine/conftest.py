"""An engine over the real default model, shared by the engine tests, and helpers to run requests."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from service.engine.async_engine import AsyncEngine
from service.engine.engine import Engine, EngineConfig
from service.engine.events import (
    ChoiceFinished,
    EngineEvent,
    GenerationRequest,
    RequestFailed,
    RequestFinished,
    TokenEvent,
)
from service.engine.runner import ModelRunner, RunnerOptions
from service.sampling import SamplingParams

_ids = itertools.count()


@dataclass
class Outcome:
    """Everything one request produced, per choice."""

    tokens: dict[int, list[int]] = field(default_factory=dict)
    text: dict[int, str] = field(default_factory=dict)
    finished: dict[int, ChoiceFinished] = field(default_factory=dict)
    done: RequestFinished | None = None
    failed: RequestFailed | None = None
    events: list[EngineEvent] = field(default_factory=list)


def chat_prompt(tokenizer: Tokenizer, user: str) -> tuple[int, ...]:
    text = f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return tuple(tokenizer.encode(text, add_special_tokens=False).ids)


def request(
    prompt: tuple[int, ...], *, n: int = 1, deadline: float | None = None, priority: int = 0, **params: Any
) -> GenerationRequest:
    sampling = SamplingParams(**params).validated(vocab_size=49152)
    return GenerationRequest(f"r{next(_ids)}", prompt, sampling, n=n, deadline=deadline, priority=priority)


async def collect(engine: AsyncEngine, req: GenerationRequest) -> Outcome:
    out = Outcome()
    async for event in engine.generate(req):
        out.events.append(event)
        if isinstance(event, TokenEvent):
            out.tokens.setdefault(event.index, []).extend(event.token_ids)
            out.text[event.index] = out.text.get(event.index, "") + event.text
        elif isinstance(event, ChoiceFinished):
            out.finished[event.index] = event
            out.text[event.index] = out.text.get(event.index, "") + event.text
        elif isinstance(event, RequestFinished):
            out.done = event
        elif isinstance(event, RequestFailed):
            out.failed = event
    return out


async def wait_until(predicate: Callable[[], bool], within_s: float = 30.0) -> None:
    """Poll engine state from the test (the engine thread offers no events for its internal state)."""
    for _ in range(int(within_s / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in time")


async def run_all(engine: AsyncEngine, reqs: list[GenerationRequest]) -> list[Outcome]:
    return list(await asyncio.gather(*(collect(engine, r) for r in reqs)))


def make_engine(
    model_dir: Path, tokenizer: Tokenizer, *, max_batch: int, capacity: int, **config: object
) -> Engine:
    runner = ModelRunner(model_dir, RunnerOptions(max_batch=max_batch, kv_capacity=capacity))
    engine = Engine(runner, tokenizer, EngineConfig(**config))  # type: ignore[arg-type]
    engine.start()
    return engine


@pytest.fixture(scope="session")
def model_tokenizer(default_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(default_model_dir / "tokenizer.json"))


@pytest.fixture(scope="session")
def engine(default_model_dir: Path, model_tokenizer: Tokenizer) -> Iterator[AsyncEngine]:
    core = make_engine(default_model_dir, model_tokenizer, max_batch=8, capacity=1024)
    yield AsyncEngine(core)
    core.stop()
