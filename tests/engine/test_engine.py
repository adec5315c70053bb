"""The engine on the real default model: continuous batching must not change what a request gets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from service.engine.async_engine import AsyncEngine
from service.engine.events import FinishReason, TokenEvent
from service.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from tests.engine.conftest import chat_prompt, collect, make_engine, request, run_all, wait_until

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain gravity to a child.",
    "What is 2+2?",
    "Name a colour of the rainbow.",
    "Tell me a short joke.",
    "Why is the sky blue?",
]

# A prompt whose greedy answer ends with <|im_end|> well inside 200 tokens at int4 and fp32 alike (greetings
# such as "Say hi." can fall into a repetition loop with either kernel set: a coin toss of rounding).
ENDS_ITSELF = "Write one sentence about the moon."


async def test_greedy_outputs_are_the_same_alone_and_batched(
    engine: AsyncEngine, model_tokenizer: Tokenizer
) -> None:
    """Batch rows are computed independently (verified bit-identical logits, DESIGN.md §5), so greedy
    decoding of 8 prompts together equals each prompt alone, token for token."""
    prompts = [chat_prompt(model_tokenizer, p) for p in PROMPTS]
    alone = [await collect(engine, request(p, temperature=0.0, max_tokens=24)) for p in prompts]
    together = await run_all(engine, [request(p, temperature=0.0, max_tokens=24) for p in prompts])
    for single, batched, prompt in zip(alone, together, PROMPTS, strict=True):
        assert batched.tokens[0] == single.tokens[0], prompt
        assert batched.text[0] == single.text[0]
        # Usage counts every sampled token, the end-of-sequence token too (it has no text event).
        ended_by_eos = (
            single.finished[0].reason is FinishReason.STOP and single.finished[0].matched_stop is None
        )
        assert single.done is not None
        assert single.done.usage.completion_tokens == len(single.tokens[0]) + ended_by_eos


async def test_seeded_sampling_ignores_the_rest_of_the_batch(
    engine: AsyncEngine, model_tokenizer: Tokenizer
) -> None:
    prompt = chat_prompt(model_tokenizer, "Invent a name for a new fruit.")
    params: dict[str, Any] = {
        "temperature": 1.0,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 1234,
        "max_tokens": 20,
    }
    alone = await collect(engine, request(prompt, **params))
    noise = [request(chat_prompt(model_tokenizer, p), temperature=0.8, max_tokens=30) for p in PROMPTS[:5]]
    busy = await run_all(engine, [*noise[:3], request(prompt, **params), *noise[3:]])
    assert busy[3].tokens[0] == alone.tokens[0]
    other_seed = await collect(engine, request(prompt, **{**params, "seed": 99}))
    assert other_seed.tokens[0] != alone.tokens[0]


async def test_n_choices_share_one_prefill(engine: AsyncEngine, model_tokenizer: Tokenizer) -> None:
    prompt = chat_prompt(model_tokenizer, "Give me a word that rhymes with cat.")
    out = await collect(engine, request(prompt, n=3, temperature=1.0, seed=7, max_tokens=12))
    assert sorted(out.finished) == [0, 1, 2]
    assert len({tuple(t) for t in out.tokens.values()}) > 1  # choices draw differently
    assert out.done is not None
    eos_ended = sum(f.reason is FinishReason.STOP and f.matched_stop is None for f in out.finished.values())
    assert out.done.usage.completion_tokens == sum(len(t) for t in out.tokens.values()) + eos_ended
    again = await collect(engine, request(prompt, n=3, temperature=1.0, seed=7, max_tokens=12))
    assert again.tokens == out.tokens  # reproducible as a whole


async def test_a_repeated_prompt_reuses_the_cached_prefix(
    engine: AsyncEngine, model_tokenizer: Tokenizer
) -> None:
    prompt = chat_prompt(model_tokenizer, "Describe a lighthouse in one sentence. " * 3)
    first = await collect(engine, request(prompt, temperature=0.0, max_tokens=8))
    second = await collect(engine, request(prompt, temperature=0.0, max_tokens=8))
    assert first.done is not None and second.done is not None
    assert second.done.usage.cached_tokens == len(prompt) - 1
    assert second.tokens == first.tokens
    # A continuation of the conversation reuses the prompt and the reply.
    follow = (
        prompt
        + tuple(first.tokens[0])
        + tuple(model_tokenizer.encode("\n<|im_start|>user\nAnd at night?<|im_end|>\n").ids)
    )
    third = await collect(engine, request(follow, temperature=0.0, max_tokens=4))
    assert third.done is not None and third.done.usage.cached_tokens >= len(prompt)


async def test_finish_reasons(engine: AsyncEngine, model_tokenizer: Tokenizer) -> None:
    prompt = chat_prompt(model_tokenizer, "Count from one to twenty, separated by commas.")
    length = await collect(engine, request(prompt, temperature=0.0, max_tokens=5))
    assert length.finished[0].reason is FinishReason.LENGTH and len(length.tokens[0]) == 5
    full = await collect(engine, request(prompt, temperature=0.0, max_tokens=60))
    text = full.text[0]
    stop_word = text[len(text) // 3 : len(text) // 3 + 3]
    stopped = await collect(engine, request(prompt, temperature=0.0, max_tokens=60, stop=[stop_word]))
    assert stopped.finished[0].reason is FinishReason.STOP
    assert stopped.finished[0].matched_stop == stop_word
    assert stopped.text[0] == text[: text.index(stop_word)]
    eos = await collect(
        engine, request(chat_prompt(model_tokenizer, ENDS_ITSELF), temperature=0.0, max_tokens=200)
    )
    assert eos.finished[0].reason is FinishReason.STOP and eos.finished[0].matched_stop is None
    assert "<|im_end|>" not in eos.text[0]


async def test_min_tokens_and_ignore_eos(engine: AsyncEngine, model_tokenizer: Tokenizer) -> None:
    prompt = chat_prompt(model_tokenizer, ENDS_ITSELF)
    out = await collect(engine, request(prompt, temperature=0.0, max_tokens=40, ignore_eos=True))
    assert out.finished[0].reason is FinishReason.LENGTH and len(out.tokens[0]) == 40
    assert 2 not in out.tokens[0]  # <|im_end|> never sampled
    short = await collect(engine, request(prompt, temperature=0.0, max_tokens=200))
    at_least = await collect(
        engine, request(prompt, temperature=0.0, max_tokens=200, min_tokens=len(short.tokens[0]) + 5)
    )
    assert len(at_least.tokens[0]) >= len(short.tokens[0]) + 5


async def test_logprobs_come_with_each_token(engine: AsyncEngine, model_tokenizer: Tokenizer) -> None:
    out = await collect(
        engine,
        request(
            chat_prompt(model_tokenizer, "Hello!"),
            temperature=0.0,
            max_tokens=6,
            logprobs=True,
            top_logprobs=3,
        ),
    )
    token_events = [e for e in out.events if isinstance(e, TokenEvent)]
    assert token_events
    for event in token_events:
        (lp,) = event.logprobs
        assert lp.logprob <= 0 and len(lp.top_ids) == 3
        assert lp.top_ids[0] == event.token_ids[0]  # greedy: the chosen token is the most likely


async def test_cancelling_frees_the_slot(engine: AsyncEngine, model_tokenizer: Tokenizer) -> None:
    prompt = chat_prompt(model_tokenizer, "Write a long story about a dragon.")
    stream = engine.generate(request(prompt, temperature=0.0, max_tokens=500, ignore_eos=True))
    seen = 0
    async for event in stream:
        seen += isinstance(event, TokenEvent)
        if seen >= 3:
            break
    await stream.aclose()  # leaving the iterator cancels the request in the engine
    await wait_until(lambda: engine.engine.stats().running == 0)
    after = await collect(
        engine, request(chat_prompt(model_tokenizer, "Say hi."), temperature=0.0, max_tokens=4)
    )
    assert after.done is not None


async def test_cancel_during_prefill(default_model_dir: Path, model_tokenizer: Tokenizer) -> None:
    core = make_engine(
        default_model_dir, model_tokenizer, max_batch=2, capacity=2048, prefill_chunk=64, max_prefill_run=64
    )
    try:
        eng = AsyncEngine(core)
        long_prompt = chat_prompt(model_tokenizer, "tell me about the sea " * 200)  # ~1000 tokens: 16 chunks
        req = request(long_prompt, temperature=0.0, max_tokens=4)
        task = asyncio.create_task(collect(eng, req))
        await wait_until(lambda: core.stats().running > 0)  # admitted: its prefill is under way (16 chunks)
        core.cancel(req.request_id)
        out = await task
        assert out.finished[0].reason is FinishReason.CANCELLED
        assert not out.tokens
        assert core.stats().running == 0
    finally:
        core.stop()


async def test_queued_request_past_its_deadline_never_runs(
    default_model_dir: Path, model_tokenizer: Tokenizer
) -> None:
    core = make_engine(default_model_dir, model_tokenizer, max_batch=1, capacity=512)
    try:
        eng = AsyncEngine(core)
        busy = asyncio.create_task(
            collect(
                eng,
                request(chat_prompt(model_tokenizer, "Hi"), temperature=0.0, max_tokens=80, ignore_eos=True),
            )
        )
        await wait_until(lambda: core.stats().running > 0)  # the only slot is taken
        late = await collect(
            eng,
            request(
                chat_prompt(model_tokenizer, "Hello"),
                temperature=0.0,
                max_tokens=4,
                deadline=time.monotonic() + 0.05,
            ),
        )
        assert late.failed is not None and isinstance(late.failed.error, DeadlineExceeded)
        assert not late.tokens
        assert (await busy).done is not None
    finally:
        core.stop()


async def test_context_window_end_is_its_own_finish_reason(
    default_model_dir: Path, model_tokenizer: Tokenizer
) -> None:
    core = make_engine(default_model_dir, model_tokenizer, max_batch=1, capacity=40)
    try:
        eng = AsyncEngine(core)
        prompt = chat_prompt(model_tokenizer, "Write a poem about autumn leaves.")
        out = await collect(eng, request(prompt, temperature=0.0, ignore_eos=True))
        assert out.finished[0].reason is FinishReason.CONTEXT_LENGTH
        assert len(prompt) + len(out.tokens[0]) == 40
        too_long = await collect(eng, request(chat_prompt(model_tokenizer, "word " * 60), temperature=0.0))
        assert too_long.failed is not None and isinstance(too_long.failed.error, InvalidArgument)
        assert "context window is 40" in too_long.failed.error.message
    finally:
        core.stop()


async def test_a_full_queue_is_resource_exhausted(
    default_model_dir: Path, model_tokenizer: Tokenizer
) -> None:
    core = make_engine(default_model_dir, model_tokenizer, max_batch=1, capacity=256, max_queued=1)
    try:
        eng = AsyncEngine(core)
        prompt = chat_prompt(model_tokenizer, "Hi")
        reqs = [request(prompt, temperature=0.0, max_tokens=20, ignore_eos=True) for _ in range(4)]
        outs = await run_all(eng, reqs)
        refused = [o for o in outs if o.failed is not None]
        assert refused and all(isinstance(o.failed.error, ResourceExhausted) for o in refused)  # type: ignore[union-attr]
        assert any(o.done is not None for o in outs)
    finally:
        core.stop()


async def test_priority_runs_first(default_model_dir: Path, model_tokenizer: Tokenizer) -> None:
    core = make_engine(default_model_dir, model_tokenizer, max_batch=1, capacity=256)
    try:
        eng = AsyncEngine(core)
        prompt = chat_prompt(model_tokenizer, "Hi")
        first = asyncio.create_task(
            collect(eng, request(prompt, temperature=0.0, max_tokens=30, ignore_eos=True))
        )
        await wait_until(lambda: core.stats().running > 0)  # the only slot is taken: the next two queue
        low = asyncio.create_task(collect(eng, request(prompt, temperature=0.0, max_tokens=2, priority=0)))
        high = asyncio.create_task(collect(eng, request(prompt, temperature=0.0, max_tokens=2, priority=5)))
        await first
        low_out, high_out = await low, await high
        assert low_out.done is not None and high_out.done is not None
        assert high_out.done.timings.queued_s < low_out.done.timings.queued_s
    finally:
        core.stop()
