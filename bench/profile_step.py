"""Where one decode step's time goes: ONNX Runtime kernels by op type (from ORT's own profiler), the
run as a whole, and the sampler, at a given batch size. Python and gRPC shares come from comparing the
subjects' rates (see run.py)."""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from service.engine.runner import ModelRunner, RunnerOptions
from service.sampling import SamplingParams, SequenceSampling, build_columns, record_step, sample

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
    model_dir: Path, batch: int, context: int, threads: int, scales: np.ndarray | None = None
) -> dict[str, float]:
    """Milliseconds per decode step of `batch` rows with `context` cached tokens each; `scales` are the
    sampling head's (SamplingColumns.head_scales of the rows' parameters; None: all greedy)."""
    with tempfile.TemporaryDirectory() as tmp:
        profiled = ModelRunner(
            model_dir,
            RunnerOptions(
                max_batch=batch, kv_capacity=context + 64, threads=threads, profile_prefix=f"{tmp}/ort"
            ),
        )
        tokens, cached = np.full(batch, 100), np.full(batch, context)
        for _ in range(3):
            profiled.decode(tokens, cached, scales)
        profiled.decode_session.end_profiling()  # drop warm-up events: restart below on a fresh runner
        profiled = ModelRunner(
            model_dir,
            RunnerOptions(
                max_batch=batch, kv_capacity=context + 64, threads=threads, profile_prefix=f"{tmp}/ort"
            ),
        )
        for _ in range(STEPS):
            profiled.decode(tokens, cached, scales)
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
    greedy = build_columns(seqs).head_scales
    walls = []
    logits = np.zeros((batch, runner.vocab_size), np.float32)
    for _ in range(STEPS):
        start = time.perf_counter()
        logits = runner.decode(tokens, cached, greedy if scales is None else scales).copy()
        walls.append(time.perf_counter() - start)
    runner.decode(tokens, cached, greedy)
    head = runner.top_tokens(batch)  # for the greedy sampler below
    sampler = []
    for _ in range(STEPS):
        start = time.perf_counter()
        result = sample(logits, build_columns(seqs), top=head)
        record_step(seqs, result.tokens)
        sampler.append(time.perf_counter() - start)
    top = dict(list(kernels.items())[:6])
    rest = sum(kernels.values()) - sum(top.values())
    return {
        **{f"ORT {op}": ms for op, ms in top.items()},
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
