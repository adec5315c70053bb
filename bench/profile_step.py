"""Where one decode step's time goes: ONNX Runtime kernels by op type (from ORT's own profiler), the
run as a whole, and the sampler, at a given batch size. Python and gRPC shares come from comparing the
subjects' rates (see run.py)."""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from service.engine.runner import ModelRunner, RunnerOptions
from service.sampling import HeadInputs, SamplingParams, SequenceSampling, build_columns, record_step, sample

STEPS = 20
HEAD_OP = "ORT SamplingHead (the sampler's part of the run)"


def _kernel_ms(profile_file: str, steps: int) -> dict[str, float]:
    """Milliseconds per step by op type, largest first."""
    events = json.loads(Path(profile_file).read_text())
    totals: defaultdict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            totals[str(event["args"].get("op_name", "?"))] += float(event["dur"]) / 1000 / steps
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def profile_decode(
    model_dir: Path, batch: int, context: int, threads: int, head: HeadInputs | None = None
) -> dict[str, float]:
    """Milliseconds per decode step of `batch` rows with `context` cached tokens each; `head` are the
    sampling head's inputs (SamplingColumns.head of the rows' parameters and edits; None: all greedy)."""
    with tempfile.TemporaryDirectory() as tmp:
        profiled = ModelRunner(
            model_dir,
            RunnerOptions(
                max_batch=batch, kv_capacity=context + 64, threads=threads, profile_prefix=f"{tmp}/ort"
            ),
        )
        tokens, cached = np.full(batch, 100), np.full(batch, context)
        for _ in range(3):
            profiled.decode(tokens, cached, head)
        profiled.decode_session.end_profiling()  # drop warm-up events: restart below on a fresh runner
        profiled = ModelRunner(
            model_dir,
            RunnerOptions(
                max_batch=batch, kv_capacity=context + 64, threads=threads, profile_prefix=f"{tmp}/ort"
            ),
        )
        for _ in range(STEPS):
            profiled.decode(tokens, cached, head)
        kernels = _kernel_ms(profiled.decode_session.end_profiling(), STEPS)
    runner = ModelRunner(model_dir, RunnerOptions(max_batch=batch, kv_capacity=context + 64, threads=threads))
    for _ in range(3):
        runner.decode(tokens, cached)
    seqs = [
        SequenceSampling(
            SamplingParams(temperature=0.0).validated(vocab_size=runner.vocab_size),
            prompt_ids=[1],
            end_token_ids=[2],
        )
        for _ in range(batch)
    ]
    greedy = build_columns(seqs).head
    walls = []
    logits = np.zeros((batch, runner.vocab_size), np.float32)
    for _ in range(STEPS):
        start = time.perf_counter()
        logits = runner.decode(tokens, cached, greedy if head is None else head).copy()
        walls.append(time.perf_counter() - start)
    runner.decode(tokens, cached, greedy)
    top = runner.top_tokens(batch)  # for the greedy sampler below
    sampler = []
    for _ in range(STEPS):
        start = time.perf_counter()
        columns = build_columns(seqs)
        # every step's greedy columns ask the head for the same (no scales, no edits): relabel, not rerun
        step_top = None if top is None else dataclasses.replace(top, inputs=columns.head)
        result = sample(logits, columns, top=step_top)
        record_step(seqs, result.tokens)
        sampler.append(time.perf_counter() - start)
    slowest = dict(list(kernels.items())[:6])
    rest = sum(kernels.values()) - sum(slowest.values())
    return {
        **{f"ORT {op}": ms for op, ms in slowest.items()},
        "ORT other ops": rest,
        HEAD_OP: kernels.get("SamplingHead", 0.0),
        "run() wall": 1000 * float(np.median(walls)),
        "sampler (greedy)": 1000 * float(np.median(sampler)),
    }


def graph_speed(
    model_dir: Path, threads: int, batches: tuple[int, ...], context: int, prompt: list[int]
) -> dict[str, float]:
    """The ONNX graph alone (issue 2's figure): milliseconds per decode step at each batch size with
    `context` cached tokens per row, and prefill tokens per second for `prompt`."""
    runner = ModelRunner(
        model_dir,
        RunnerOptions(max_batch=max(batches), kv_capacity=max(context, len(prompt)) + 8, threads=threads),
    )
    out: dict[str, float] = {}
    for batch in batches:
        tokens, cached = np.full(batch, 100), np.full(batch, context)
        for _ in range(3):
            runner.decode(tokens, cached)
        walls = []
        for _ in range(STEPS):
            start = time.perf_counter()
            runner.decode(tokens, cached)
            walls.append(time.perf_counter() - start)
        out[f"decode_ms_batch_{batch}"] = 1000 * float(np.median(walls))
    ids = np.asarray(prompt, dtype=np.int64)
    runner.prefill(0, ids, 0)
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        runner.prefill(0, ids, 0)
        walls.append(time.perf_counter() - start)
    out["prefill_tok_s"] = len(prompt) / float(np.median(walls))
    return out
