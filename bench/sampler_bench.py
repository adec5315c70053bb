"""Sampler cost per decode step: `python -m bench.sampler_bench [--steps N] [--batch 1 8 16] [--logits F]`.

Times what the engine's Python pays per step for sampling — build_columns (per-sequence state to
columns, with the seeded draws, and the sampling head's scales and edits), sample (the pure sampler) and
record_step — at batch 1, 8 and 16 over the default model's vocabulary (49152), for several parameter
mixes. The sampler decides on the outputs of the decode graph's SamplingHead, computed here by the op
alone in ONNX Runtime, untimed: the op runs inside the graph, and `make bench` takes its time from the
profile of a decode step at the mixed parameters (`--with-head-op` adds the standalone op's time, which
also pays for waking ONNX Runtime's threads). Without Parley's kernel library (or with --no-head) the
sampler reads the logits alone, as it does without the kernels. The machine is shared, so each case
runs `--rounds` times and the round with the lowest median is reported (median and 90th percentile).

The logits are synthetic but shaped like the default model's: the r-th most likely token lies about
slope × ln(r) nats below the top, slope 1.4-2.4 (measured on SmolLM2-135M-Instruct's logits over a
211-token chat text with an fp32 numpy forward of the GGUF: median slope 1.8, top token 0-4 nats
clear of the next). That shape decides the candidate-set sizes, hence the sampler's cost.
`--logits F` takes real rows instead: a .npy (N, V) float32 array, e.g. recorded from the engine.
It also reports which candidate level (draw.py) decided the cut of truncated rows: the whole-row
fallback (a full sort) should be rare.
The budget from issue 3: ≤ 5% of a decode step at batch 8; `make bench` measures the step and these
mixes in the same run and states the share (DECODE_STEP_MS below is that run's figure, for this table).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import TensorProto, helper

from service.engine import kernels
from service.engine.kernels.fusion import (
    EDIT_FACTORS,
    EDIT_ROWS,
    EDIT_TOKENS,
    SAMPLING_MASSES,
    SAMPLING_SCALES,
    TOP_IDS,
    TOP_LOGITS,
    add_sampling_head,
)
from service.engine.runner import available_cores
from service.sampling import HeadInputs, SamplingParams, SequenceSampling, build_columns, record_step, sample
from service.sampling.draw import (
    CANDIDATE_LEVELS,
    Candidates,
    FromLogits,
    FromWeights,
    draw_truncated,
    stripe_sums,
    top_k_level,
    weights_into,
)
from service.sampling.top import TOP_TOKENS, TopTokens

VOCAB = 49152
DECODE_STEP_MS = 14.8  # the int4 graph's batch-8 decode step (bench/results/latest.md, 2026-11-22 09:01)
BENCH_MIXES = ("greedy", "temperature 0.8", "top_p 0.9", "mixed")  # what `make bench` reports
PROMPT_TOKENS = 300

MIXES: dict[str, Callable[[int], SamplingParams]] = {
    "greedy": lambda _: SamplingParams(temperature=0.0),
    "temperature 0.8": lambda _: SamplingParams(temperature=0.8),
    "top_k 40 + top_p 0.95": lambda _: SamplingParams(temperature=0.8, top_k=40, top_p=0.95),
    "top_p 0.9": lambda _: SamplingParams(temperature=1.0, top_p=0.9),
    "min_p 0.05": lambda _: SamplingParams(temperature=1.0, min_p=0.05),
    "penalties + top_p": lambda _: SamplingParams(
        temperature=0.8, top_p=0.95, repetition_penalty=1.1, frequency_penalty=0.5, presence_penalty=0.3
    ),
    "mixed": lambda row: [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_p=0.9),
        SamplingParams(temperature=0.8, top_k=40, top_p=0.95),
        SamplingParams(temperature=0.0, repetition_penalty=1.1),
        SamplingParams(temperature=1.0, top_p=0.95, logprobs=True, top_logprobs=5),
        SamplingParams(temperature=1.0, min_p=0.05),
        SamplingParams(temperature=0.8, top_p=0.95, frequency_penalty=0.5, logit_bias={13: 2.0}),
    ][row % 8],
}


def zipf_logits(rng: np.random.Generator, rows: int, vocab: int = VOCAB) -> NDArray[np.float32]:
    """Rows shaped like the default model's logits (see the module docstring), token order random."""
    log_rank = np.log(np.arange(1, vocab + 1, dtype=np.float64))
    out = np.empty((rows, vocab), np.float32)
    for row in range(rows):
        values = 20.0 - rng.uniform(1.4, 2.4) * log_rank + rng.normal(0.0, 0.3, vocab)
        values[1:] -= rng.uniform(0.0, 3.0)
        out[row, rng.permutation(vocab)] = values
    return out


class SamplingHead:
    """The decode graph's SamplingHead alone in an ONNX Runtime session (IOBinding, the engine's threads)."""

    def __init__(self, library: Path, batch: int, vocab: int = VOCAB) -> None:
        logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 1, vocab])
        model = helper.make_model(
            helper.make_graph([], "sampling_head", [logits], [logits]),
            opset_imports=[helper.make_opsetid("", 21)],
            ir_version=10,
        )
        add_sampling_head(model, "logits", TOP_TOKENS)
        options = ort.SessionOptions()
        options.intra_op_num_threads = available_cores()
        options.register_custom_ops_library(str(library))
        self.session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.ids = np.zeros((batch, TOP_TOKENS), np.int64)
        self.top = np.zeros((batch, TOP_TOKENS), np.float32)
        self.masses = np.zeros((batch, 2), np.float64)
        self.binding = self.session.io_binding()
        for name, array in ((TOP_IDS, self.ids), (TOP_LOGITS, self.top), (SAMPLING_MASSES, self.masses)):
            self.binding.bind_output(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)

    @staticmethod
    def create(batch: int) -> SamplingHead | None:
        built = kernels.library()
        return SamplingHead(built, batch) if built is not None and kernels.fast_quant_linear(built) else None

    def __call__(self, logits: NDArray[np.float32], inputs: HeadInputs) -> TopTokens:
        self.binding.bind_cpu_input("logits", np.ascontiguousarray(logits).reshape(logits.shape[0], 1, -1))
        self.binding.bind_cpu_input(SAMPLING_SCALES, inputs.scales)
        self.binding.bind_cpu_input(EDIT_ROWS, inputs.edits.rows)
        self.binding.bind_cpu_input(EDIT_TOKENS, inputs.edits.tokens)
        self.binding.bind_cpu_input(EDIT_FACTORS, inputs.edits.factors)
        self.session.run_with_iobinding(self.binding)
        return TopTokens(inputs, self.ids, self.top, self.masses)


def _sequences(make: Callable[[int], SamplingParams], batch: int) -> list[SequenceSampling]:
    rng = np.random.default_rng(1)
    return [
        SequenceSampling(
            make(row).validated(vocab_size=VOCAB),
            prompt_ids=rng.integers(0, VOCAB, PROMPT_TOKENS).tolist(),
            end_token_ids=[2],
        )
        for row in range(batch)
    ]


def mix_head(name: str, batch: int) -> HeadInputs:
    """The sampling head's inputs for a batch of the mix `name` (what its first decode step runs with)."""
    return build_columns(_sequences(MIXES[name], batch)).head


def bench_mix(
    make: Callable[[int], SamplingParams],
    batch: int,
    pool: NDArray[np.float32],
    steps: int,
    head: SamplingHead | None = None,
    *,
    time_head: bool = False,
) -> tuple[list[float], list[float]]:
    """Per-step milliseconds: (sample alone, build_columns + sample + record_step, and
    the head op's own run when time_head)."""
    sequences = _sequences(make, batch)
    sample_ms, total_ms = [], []
    for step in range(steps + 5):  # the first 5 steps warm caches and are not counted
        logits = np.ascontiguousarray(pool[(np.arange(batch) + step * batch) % pool.shape[0]])
        started = time.perf_counter()
        columns = build_columns(sequences)
        before_head = time.perf_counter()
        top = None if head is None else head(logits, columns.head)
        head_s = time.perf_counter() - before_head if head is not None and not time_head else 0.0
        sampled = time.perf_counter()
        tokens = sample(logits, columns, top=top).tokens
        done = time.perf_counter()
        record_step(sequences, tokens)
        finished = time.perf_counter()
        if step >= 5:
            sample_ms.append((done - sampled) * 1e3)
            total_ms.append((finished - started - head_s) * 1e3)
    return sample_ms, total_ms


def quietest(
    make: Callable[[int], SamplingParams],
    batch: int,
    pool: NDArray[np.float32],
    steps: int,
    rounds: int,
    head: SamplingHead | None = None,
    *,
    time_head: bool = False,
) -> tuple[list[float], list[float]]:
    """bench_mix repeated `rounds` times; the round with the lowest median total (a shared machine)."""
    return min(
        (bench_mix(make, batch, pool, steps, head, time_head=time_head) for _ in range(rounds)),
        key=lambda r: statistics.median(r[1]),
    )


def per_step_ms(batch: int = 8, steps: int = 100, rounds: int = 3) -> dict[str, float]:
    """Median milliseconds of Python per step, bookkeeping included, for each of BENCH_MIXES (synthetic
    logits; the sampling head's op is timed inside the graph, see the module docstring)."""
    pool = zipf_logits(np.random.default_rng(0), 64)
    head = SamplingHead.create(batch)
    return {
        name: statistics.median(quietest(MIXES[name], batch, pool, steps, rounds, head)[1])
        for name in BENCH_MIXES
    }


LEVEL_CASES = {  # (temperature, top_k, top_p, min_p)
    "T 0.7 top_p 0.9": (0.7, 0, 0.9, 0.0),
    "T 1.0 top_p 0.9": (1.0, 0, 0.9, 0.0),
    "T 1.0 top_p 0.95": (1.0, 0, 0.95, 0.0),
    "T 1.3 top_p 0.95": (1.3, 0, 0.95, 0.0),
    "T 1.0 top_k 40": (1.0, 40, 1.0, 0.0),
    "T 0.8 top_k 40 top_p 0.95": (0.8, 40, 0.95, 0.0),
    "T 1.0 top_k 1000": (1.0, 1000, 1.0, 0.0),
}


class _Recorder:
    """Candidates that remember the last level asked for."""

    def __init__(self, inner: Candidates) -> None:
        self.inner, self.last = inner, -1.0

    def __call__(self, level: float) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        self.last = level
        return self.inner(level)


def level_shares(pool: NDArray[np.float32], case: tuple[float, int, float, float]) -> tuple[float, ...]:
    """Fraction of rows whose cut the first tried level, a later level and the whole row decided."""
    temperature, top_k, top_p, min_p = case
    buffer = np.empty(pool.shape[1], np.float32)
    decided = [0, 0, 0]
    for row in pool:
        top, scale = row.max(), np.float32(1.0 / (np.log(2.0) * temperature))
        levels = CANDIDATE_LEVELS
        if top_k:
            estimate = top_k_level(row, top, scale, top_k)
            levels = (estimate, *(level for level in levels if level < estimate))
            source = _Recorder(FromLogits(row, top, scale, buffer))
            total = float("nan")
        else:
            weights = weights_into(row, top, scale, buffer)
            source, total = _Recorder(FromWeights(weights)), float(stripe_sums(weights)[0].sum())
        draw_truncated(source, 0.5, top_k=top_k, top_p=top_p, min_p=min_p, total=total, levels=levels)
        decided[0 if source.last == levels[0] else 2 if source.last == 0.0 else 1] += 1
    return tuple(count / pool.shape[0] for count in decided)


def _p90(values: Sequence[float]) -> float:
    return float(np.percentile(values, 90))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per case; the quietest is kept")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16], help="batch sizes")
    parser.add_argument("--logits", help="a .npy (N, V) array of real logits to use instead")
    parser.add_argument("--no-head", action="store_true", help="sample from the logits alone")
    parser.add_argument("--with-head-op", action="store_true", help="time the standalone head op too")
    args = parser.parse_args(argv)
    if args.logits:
        pool = np.load(args.logits).astype(np.float32)
        if pool.ndim != 2 or pool.shape[1] != VOCAB:
            parser.error(f"--logits must hold a (N, {VOCAB}) array, got {pool.shape}")
        source = f"{pool.shape[0]} rows from {args.logits}"
    else:
        pool, source = zipf_logits(np.random.default_rng(0), 64), "64 synthetic rows"
    heads = {batch: None if args.no_head else SamplingHead.create(batch) for batch in args.batch}
    with_head = "with" if all(heads.values()) else "without"
    print(f"sampler per decode step, V={VOCAB}, {source}, best of {args.rounds} rounds of {args.steps} steps")
    print(f"{with_head} the sampling head; milliseconds: median (p90)")
    op = " + the head op alone" if args.with_head_op else ""
    print(f"bookkeeping = build_columns (with the head's inputs) + sample + record_step{op}")
    print(f"{'parameters':24s} {'batch':>5s} {'sample':>15s} {'with bookkeeping':>18s} {'% of step':>10s}")
    for name, make in MIXES.items():
        for batch in args.batch:
            sample_ms, total_ms = quietest(
                make, batch, pool, args.steps, args.rounds, heads[batch], time_head=args.with_head_op
            )
            total = statistics.median(total_ms)
            share = f"{100 * total / DECODE_STEP_MS:9.1f}%" if batch == 8 else ""
            print(
                f"{name:24s} {batch:5d} {statistics.median(sample_ms):7.3f} ({_p90(sample_ms):5.3f})"
                f" {total:9.3f} ({_p90(total_ms):5.3f}) {share:>10s}"
            )
    print("\nwhich candidate level decided the cut (share of rows): first tried, a lower one, whole row")
    for name, case in LEVEL_CASES.items():
        first, lower, whole = level_shares(pool, case)
        print(f"{name:28s} {first:6.1%} {lower:6.1%} {whole:6.1%}")


if __name__ == "__main__":
    main()
