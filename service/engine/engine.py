"""The engine: a dedicated thread that runs the model for every admitted request, continuously batched.

Each loop iteration (one "step"):
  1. take new commands (submit, cancel, stop) from other threads;
  2. drop queued requests whose deadline passed; finish cancelled and timed-out choices;
  3. admit the best queued request (priority, then FIFO) when no prefill is in flight and rows are free;
  4. run one prefill chunk of the request being prefilled (the whole prompt when nothing is decoding);
  5. run one decode step over every decoding choice and sample them together.
Running streams therefore wait at most one prefill chunk. The asyncio side never blocks on this thread:
events leave through a sink (see async_engine.py).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from service.engine.events import FinishReason, GenerationRequest, RequestFailed
from service.engine.factory import Runner
from service.engine.sequence import ActiveRequest, Choice, EventSink
from service.engine.slots import SlotTable, Swap
from service.errors import (
    DeadlineExceeded,
    EngineFailure,
    InvalidArgument,
    ParleyError,
    ResourceExhausted,
    Unavailable,
)
from service.sampling import NonFiniteLogits, SamplingColumns, build_columns, record_step, sample
from service.sampling.top import TopTokens

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3  # failed model runs in a row before the engine reports itself unhealthy


@dataclass(frozen=True)
class EngineConfig:
    max_queued: int = 256  # requests waiting for a slot; more → RESOURCE_EXHAUSTED
    prefill_chunk: int = 128  # prompt tokens per prefill run while others decode: bounds their stall (~0.2 s)
    # prompt tokens per prefill run when nothing else is running: 128-256 token runs prefill a 2048-token
    # prompt 5% faster than one run (attention's working set), and let new arrivals join sooner
    max_prefill_run: int = 256
    park_idle_seconds: float = 600.0  # a finished sequence's K/V stays reusable this long (prefix reuse)


@dataclass(frozen=True)
class EngineStats:
    running: int
    queued: int
    decoding: int
    parked_tokens: int
    steps: int
    healthy: bool


class Engine:
    def __init__(self, runner: Runner, tokenizer: Tokenizer, config: EngineConfig = EngineConfig()) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.config = config
        self.card = runner.card
        self.capacity = runner.usable_capacity
        self.end_token_ids = frozenset(self.card.stop_token_ids)
        self.slots = SlotTable(runner.kv_shape.max_batch)
        self._commands: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self._queue: list[tuple[int, int, ActiveRequest]] = []  # heap of (-priority, arrival, request)
        self._arrivals = itertools.count()
        self._by_id: dict[str, ActiveRequest] = {}
        self._prefilling: ActiveRequest | None = None
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._steps = 0
        self.healthy = False
        self.fatal_error: str | None = None

    # --- other threads ---------------------------------------------------------------------------
    def start(self, *, warm_up: bool = True) -> None:
        if warm_up:
            self._warm_up()
        self._thread = threading.Thread(target=self._loop, name="parley-engine", daemon=True)
        self._thread.start()
        self.healthy = True

    def submit(self, request: GenerationRequest, sink: EventSink) -> None:
        """Queue a request; its events go to `sink` from the engine thread."""
        if not self.healthy:
            raise Unavailable(f"the engine is not serving ({self.fatal_error or 'not started'})")
        self._commands.put(("submit", (request, sink, time.monotonic())))

    def cancel(self, request_id: str) -> None:
        self._commands.put(("cancel", request_id))

    def stop(self, timeout: float = 10.0) -> None:
        self._commands.put(("stop", None))
        if self._thread is not None:
            self._thread.join(timeout)
        self.healthy = False

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.slots.occupants()),
            queued=len(self._queue),
            decoding=self.slots.decoding,
            parked_tokens=self.slots.parked_tokens(),
            steps=self._steps,
            healthy=self.healthy,
        )

    def _warm_up(self) -> None:
        """Run a prefill and decode steps at every batch size the engine will use, before serving:
        ORT sets up each shape on its first run, CUDA graphs are captured per bucket, and the CPU
        attention kernel writes every row of a bound KV buffer the first time it sees it (measured:
        810 ms for 8 slots of 4096 tokens). Paying that here keeps first requests fast and makes the
        KV cache's memory (max_batch × capacity) resident from the start, not midway through a load."""
        token = self.card.bos_token_id or 0
        self.runner.prefill(0, np.full(4, token, dtype=np.int64), 0)
        for size in self.runner.warm_up_batch_sizes:
            for _ in range(2):
                self.runner.decode(np.full(size, token, dtype=np.int64), np.full(size, 4, dtype=np.int32))

    # --- the loop --------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while self._take_commands():
                now = time.monotonic()
                self._expire(now)
                self._admit(now)
                if self._prefilling is not None:
                    self._prefill_step()
                if self.slots.decoding:
                    self._decode_step()
                self._steps += 1
        except Exception as exc:  # a bug in the loop: fail everything loudly rather than hang clients
            log.exception("engine loop crashed")
            self.fatal_error = f"engine loop crashed: {exc}"
            self.healthy = False
            self._fail_all(EngineFailure(self.fatal_error))

    def _idle(self) -> bool:
        return self._prefilling is None and not self.slots.decoding and not self._queue

    def _take_commands(self) -> bool:
        """Apply pending commands, blocking while there is nothing else to do. False: stop."""
        block = self._idle()
        while True:
            try:
                kind, payload = self._commands.get(block=block, timeout=1.0 if block else None)
            except queue.Empty:
                if block:
                    self.slots.evict_idle(time.monotonic() - self.config.park_idle_seconds)
                    block = self._idle()
                    continue
                return True
            block = False
            if kind == "stop":
                self._fail_all(Unavailable("the server is shutting down"))
                return False
            if kind == "submit":
                self._enqueue(*payload)  # type: ignore[misc]
            elif kind == "cancel":
                self._cancel(str(payload))

    def _enqueue(self, request: GenerationRequest, sink: EventSink, submitted_at: float) -> None:
        if request.request_id in self._by_id:
            sink(RequestFailed(request.request_id, InvalidArgument("request_id", "already running")))
            return
        error = self._admission_error(request)
        if error is not None:
            sink(RequestFailed(request.request_id, error))
            return
        active = ActiveRequest(request, sink, submitted_at)
        self._by_id[request.request_id] = active
        heapq.heappush(self._queue, (-request.priority, next(self._arrivals), active))

    def _admission_error(self, request: GenerationRequest) -> ParleyError | None:
        if len(self._queue) >= self.config.max_queued:
            return ResourceExhausted(
                f"{len(self._queue)} requests are already queued (limit {self.config.max_queued})"
            )
        if request.n > self.slots.n_slots:
            return InvalidArgument(
                "n", f"must be at most {self.slots.n_slots} on this server, got {request.n}"
            )
        if not request.prompt_ids:
            return InvalidArgument("prompt", "is empty")
        if len(request.prompt_ids) >= self.capacity:
            return InvalidArgument(
                "prompt",
                f"the prompt is {len(request.prompt_ids)} tokens; "
                f"this server's context window is {self.capacity}",
            )
        vocab = self.card.vocab_size
        if any(not 0 <= t < vocab for t in request.prompt_ids):
            return InvalidArgument("prompt", f"token ids must be in [0, {vocab})")
        return None

    def _cancel(self, request_id: str) -> None:
        active = self._by_id.get(request_id)
        if active is not None:
            active.cancelled = True

    def _expire(self, now: float) -> None:
        """Drop queued requests past their deadline; finish cancelled or timed-out running ones."""
        if any(a.cancelled or _past(a, now) for _, _, a in self._queue):
            kept = []
            for entry in self._queue:
                active = entry[2]
                if active.cancelled:
                    self._finish_unstarted(active, FinishReason.CANCELLED, now)
                elif _past(active, now):
                    self._fail(active, DeadlineExceeded("the request's deadline passed while it was queued"))
                else:
                    kept.append(entry)
            self._queue = kept
            heapq.heapify(self._queue)
        for active in list(self._by_id.values()):
            if active.admitted_at is None:
                continue
            reason = (
                FinishReason.CANCELLED
                if active.cancelled
                else FinishReason.TIME_LIMIT
                if _past(active, now)
                else None
            )
            if reason is not None:
                for choice in active.choices:
                    if not choice.finished:
                        self._end_choice(choice, reason, now)
                if active is self._prefilling:
                    self._prefilling = None
                active.complete_if_finished(now)
                self._forget(active)

    def _finish_unstarted(self, active: ActiveRequest, reason: FinishReason, now: float) -> None:
        active.make_choices(self.tokenizer, self.end_token_ids)
        for choice in active.choices:
            choice.finish(reason, now)
        active.complete_if_finished(now)
        self._forget(active)

    def _admit(self, now: float) -> None:
        if self._prefilling is not None or not self._queue:
            return
        active = self._queue[0][2]
        if len(self.slots.free_rows()) < active.request.n:
            return
        heapq.heappop(self._queue)
        active.make_choices(self.tokenizer, self.end_token_ids)
        first = active.choices[0]
        placement = self.slots.place(first, active.request.prompt_ids, now)
        assert placement is not None  # free rows were checked above
        first.n_cached = placement.reused
        active.cached_prompt_tokens = placement.reused
        active.prefilled = placement.reused
        active.admitted_at = now
        self._prefilling = active
        log.debug(
            "request %s admitted to slot %d (%d cached tokens)",
            active.request.request_id,
            first.slot,
            placement.reused,
        )

    # --- model steps -----------------------------------------------------------------------------
    def _prefill_step(self) -> None:
        """Prefill all prompt tokens but the last; the last one runs in the next decode step, so a
        request's first logits always come from the same kind of run (a decode row) whatever the
        chunking or the reused prefix — measured: a last token inside a multi-token prefill gives
        logits up to 0.8 apart from the same token run alone, enough to flip seeded sampling."""
        active = self._prefilling
        assert active is not None
        first = active.choices[0]
        prompt = active.request.prompt_ids
        target = len(prompt) - 1
        if active.prefilled < target:
            budget = self.config.prefill_chunk if self.slots.decoding else self.config.max_prefill_run
            start, end = active.prefilled, min(target, active.prefilled + budget)
            try:
                self.runner.prefill(first.slot, np.asarray(prompt[start:end], dtype=np.int64), start)
                self._failures = 0
            except EngineFailure as exc:
                self._prefilling = None
                self._record_failure(exc)
                self._fail(active, exc)
                return
            active.prefilled = first.n_cached = end
            if end < target:
                return
        self._prefilling = None
        for choice in active.choices[1:]:  # n > 1: siblings copy the prompt's K/V instead of prefilling
            row = self.slots.fork(choice)
            assert row is not None  # admission reserved enough free rows
            self.runner.kv.copy_slot(first.slot, row, target)
            choice.n_cached = target
        for choice in active.choices:
            choice.pending = prompt[-1]
            self._apply(self.slots.start_decoding(choice))

    def _decode_step(self) -> None:
        rows: list[Choice] = [self.slots.rows[i] for i in range(self.slots.decoding)]  # type: ignore[misc]
        tokens = np.array([c.pending for c in rows], dtype=np.int64)
        cached = np.array([c.n_cached for c in rows], dtype=np.int32)
        columns = build_columns([c.sampling for c in rows])  # before the run: it sets the sampling head
        try:
            logits = self.runner.decode(tokens, cached, columns.head)
            self._failures = 0
        except EngineFailure as exc:
            self._record_failure(exc)
            for choice in rows:
                self._fail(choice.owner, exc)
            return
        for choice in rows:
            choice.n_cached += 1
        self._sample_and_accept(rows, columns, logits, self.runner.top_tokens(len(rows)))
        self._release_finished(rows, time.monotonic())

    def _sample_and_accept(
        self, choices: list[Choice], columns: SamplingColumns, logits: np.ndarray, top: TopTokens | None
    ) -> None:
        samplings = [c.sampling for c in choices]
        try:
            result = sample(logits, columns, top=top)
        except NonFiniteLogits as exc:  # fail those rows only; the rest keep their draws
            bad = set(exc.rows)
            for row in bad:
                self._fail(choices[row].owner, EngineFailure(f"the model produced no usable logits: {exc}"))
            keep = [i for i in range(len(choices)) if i not in bad]
            if not keep:
                return
            choices, samplings = [choices[i] for i in keep], [samplings[i] for i in keep]
            kept = columns.select(keep)
            result = sample(logits[keep], kept, top=None if top is None else top.select(keep, kept.head))
        record_step(samplings, result.tokens)
        for choice, token, logprobs in zip(choices, result.tokens.tolist(), result.logprobs, strict=True):
            if not choice.finished:
                choice.accept(token, logprobs, self.capacity)

    def _release_finished(self, choices: list[Choice], now: float) -> None:
        for choice in choices:
            if choice.finished and choice.slot >= 0:
                self._apply(self.slots.finish(choice, now))
                choice.slot = -1
        for owner in {id(c.owner): c.owner for c in choices}.values():
            if owner.complete_if_finished(now):
                self._forget(owner)

    def _end_choice(self, choice: Choice, reason: FinishReason, now: float) -> None:
        choice.finish(reason, now)
        if choice.slot >= 0:
            self._apply(self.slots.finish(choice, now))
            choice.slot = -1

    def _apply(self, swaps: list[Swap]) -> None:
        for swap in swaps:
            self.runner.kv.swap_slots(swap.a, swap.b, swap.length_a, swap.length_b)

    # --- failures --------------------------------------------------------------------------------
    def _fail(self, active: ActiveRequest, error: ParleyError) -> None:
        now = time.monotonic()
        for choice in active.choices:
            if choice.slot >= 0:
                choice.finished = True
                self._apply(self.slots.finish(choice, now, park=False))
                choice.slot = -1
        if not active.done:
            active.emit(RequestFailed(active.request.request_id, error))
            active.done = True
        if active is self._prefilling:
            self._prefilling = None
        self._forget(active)

    def _fail_all(self, error: ParleyError) -> None:
        for active in list(self._by_id.values()):
            self._fail(active, error)
        self._queue.clear()

    def _record_failure(self, exc: EngineFailure) -> None:
        self._failures += 1
        log.error("model run failed (%d in a row): %s", self._failures, exc)
        if self._failures >= MAX_CONSECUTIVE_FAILURES:
            self.healthy = False
            self.fatal_error = f"{self._failures} model runs failed in a row; last: {exc}"

    def _forget(self, active: ActiveRequest) -> None:
        self._by_id.pop(active.request.request_id, None)


def _past(active: ActiveRequest, now: float) -> bool:
    deadline = active.request.deadline
    return deadline is not None and now >= deadline
