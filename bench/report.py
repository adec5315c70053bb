"""Turn the results into a table (stdout and markdown), JSON and a PNG chart. Every Parley figure is
shown beside llama.cpp's and as a ratio to it; the goals of DESIGN.md §6 are checked and stated."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.profile_step import HEAD_OP
from bench.timing import median

GRPC, ENGINE, LLAMA = "parley-grpc", "parley-engine", "llama.cpp"


@dataclass(frozen=True)
class Goal:
    name: str
    value: float | None  # the measured ratio
    target: str
    met: bool | None  # None: not measurable in this run


def _get(results: dict[str, Any], *path: str) -> float | None:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def _at_least(bound: float) -> Callable[[float], bool]:
    return lambda ratio: ratio >= bound


def _at_most(bound: float) -> Callable[[float], bool]:
    return lambda ratio: ratio <= bound


def paired_ratio(results: dict[str, Any], a: str, b: str) -> float | None:
    """Median over repetitions of a's rate / b's rate, each pair measured back to back: on a shared
    machine, drift and neighbours' bursts cancel within a pair far better than across medians."""
    reps_a = results.get("single_stream", {}).get(a, {}).get("decode_tok_s_reps")
    reps_b = results.get("single_stream", {}).get(b, {}).get("decode_tok_s_reps")
    if not reps_a or not reps_b:
        return None
    return median([x / y for x, y in zip(reps_a, reps_b, strict=False) if y > 0])


def goals(results: dict[str, Any]) -> list[Goal]:
    single_grpc = _get(results, "single_stream", GRPC, "decode_tok_s")
    single_engine = _get(results, "single_stream", ENGINE, "decode_tok_s")
    single_llama = _get(results, "single_stream", LLAMA, "decode_tok_s")
    agg8 = _get(results, "concurrency", "8", GRPC, "aggregate_tok_s")
    ttft_grpc = _get(results, "ttft", "512", GRPC, "ttft_ms")
    ttft_llama = _get(results, "ttft", "512", LLAMA, "ttft_ms")
    sampler_python = _get(results, "sampler", "mixed")
    head_op = _get(results, "profile", "8", HEAD_OP)
    sampler_mixed = None if sampler_python is None else sampler_python + (head_op or 0.0)
    step8 = _get(results, "profile", "8", "run() wall")

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    checks = [
        (
            "single-stream decode over gRPC vs llama.cpp (median of back-to-back pairs)",
            paired_ratio(results, GRPC, LLAMA) or ratio(single_grpc, single_llama),
            ">= 1.5x",
            _at_least(1.5),
        ),
        (
            "8 concurrent streams (aggregate) vs llama.cpp single stream",
            ratio(agg8, single_llama),
            ">= 4x",
            _at_least(4.0),
        ),
        (
            "time to first token, 512-token prompt, vs llama.cpp",
            ratio(ttft_grpc, ttft_llama),
            "<= 0.5x",
            _at_most(0.5),
        ),
        (
            "client-observed rate vs the engine's own (median of back-to-back pairs)",
            paired_ratio(results, GRPC, ENGINE) or ratio(single_grpc, single_engine),
            ">= 0.9x",
            _at_least(0.9),
        ),
        (
            "sampler per step at batch 8 (mixed parameters: graph op + Python) vs the batch-8 step",
            ratio(sampler_mixed, step8),
            "<= 0.05x",
            _at_most(0.05),
        ),
    ]
    return [
        Goal(name, value, target, None if value is None else check(value))
        for name, value, target, check in checks
    ]


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.1f}{unit}" if value < 1000 else f"{value:.0f}{unit}"


def _row(label: str, metric: dict[str, Any], key: str, higher_is_better: bool) -> str:
    values = {name: _get(metric, name, key) for name in (GRPC, ENGINE, LLAMA)}
    base = values[LLAMA]
    grpc_value = values[GRPC]
    ratio = grpc_value / base if grpc_value is not None and base else None
    shown = "-" if ratio is None else f"{ratio:.2f}x"
    better = "" if ratio is None else (" (better)" if (ratio > 1) == higher_is_better else " (worse)")
    cells = " | ".join(_fmt(values[name]) for name in (GRPC, ENGINE, LLAMA))
    return f"| {label} | {cells} | {shown}{better} |"


def table(results: dict[str, Any]) -> str:
    lines = [
        f"Parley benchmark, {results['date']}, {results['machine']['summary']}",
        f"mode: {results['mode']}; model: {results['model']}; "
        f"llama.cpp: {results.get('llamacpp_version') or 'not run'}",
        "",
        "| measure | Parley gRPC | Parley engine | llama.cpp | gRPC / llama.cpp |",
        "|---|---|---|---|---|",
    ]
    graph = results.get("graph", {})
    if graph:
        ours, theirs = graph.get("parley-graph", {}), graph.get(LLAMA, {})
        paired = graph.get("paired", {})
        for batch in (1, 4, 8):
            key = f"decode_ms_batch_{batch}"
            mine = ours.get(key)
            base = theirs.get(key) if batch == 1 else None
            rate = f"{1000 * batch / mine:.0f} tok/s" if mine else "-"
            speedup = paired.get("decode_batch_1_speedup") if batch == 1 else None
            ratio = f"{speedup:.2f}x faster" if speedup else "-"
            label = f"model alone: decode step, batch {batch} (ms; {rate})"
            lines.append(f"| {label} | {_fmt(mine)} | - | {_fmt(base)} | {ratio} |")
        mine, base = ours.get("prefill_tok_s"), theirs.get("prefill_tok_s")
        speedup = paired.get("prefill_speedup")
        ratio = f"{speedup:.2f}x faster" if speedup else "-"
        label = f"model alone: prefill, {graph.get('prompt_tokens')}-token prompt (tok/s)"
        lines.append(f"| {label} | {_fmt(mine)} | - | {_fmt(base)} | {ratio} |")
    single = results.get("single_stream", {})
    lines.append(_row("single-stream decode (tok/s)", single, "decode_tok_s", True))
    lines.append(_row("single-stream inter-token p50 (ms)", single, "itl_p50_ms", False))
    for length, metric in results.get("ttft", {}).items():
        lines.append(_row(f"time to first token, {length}-token prompt (ms)", metric, "ttft_ms", False))
    for n, metric in results.get("concurrency", {}).items():
        lines.append(_row(f"{n} streams: aggregate (tok/s)", metric, "aggregate_tok_s", True))
        lines.append(_row(f"{n} streams: time to first token p50 (ms)", metric, "ttft_p50_ms", False))
        lines.append(_row(f"{n} streams: inter-token p95 (ms)", metric, "itl_p95_ms", False))
    conv = results.get("conversation", {})
    if conv:
        lines.append(
            _row("conversation, later turns: time to first token (ms)", conv, "ttft_ms_later_turns", False)
        )
    session = results.get("session")
    if session:
        turns = len(session["ttft_ms_per_turn"])
        later = _fmt(session["ttft_ms_later_turns"])
        lines.append(
            f"| session ({turns} turns), later turns: time to first token (ms) | {later} | - | - | - |"
        )
    rss = results.get("peak_rss_mib", {})
    if rss:
        lines.append(f"| peak RSS (MiB) | {_fmt(rss.get(GRPC))} | - | {_fmt(rss.get(LLAMA))} | - |")
    lines += [
        "",
        "Ratios in the last column compare medians; the model-alone speedups and the goals below use the",
        "median of back-to-back pairs, which cancels the drift of a shared machine better.",
        "",
        "Goals (DESIGN.md §6):",
    ]
    for goal in goals(results):
        state = "not measured" if goal.met is None else ("met" if goal.met else "NOT met")
        value = "-" if goal.value is None else f"{goal.value:.2f}x"
        lines.append(f"- {goal.name}: {value} (target {goal.target}): {state}")
    profile = results.get("profile")
    if profile:
        lines += ["", "Where a decode step's time goes (ORT kernels by op type, then sampler and Python):"]
        for batch, rows in profile.items():
            parts = ", ".join(f"{op} {ms:.2f} ms" for op, ms in rows.items())
            lines.append(f"- batch {batch}: {parts}")
    sampler = results.get("sampler")
    if sampler:
        parts = ", ".join(f"{mix} {ms:.2f} ms" for mix, ms in sampler.items())
        lines.append(
            f"- sampler's Python at batch 8, per step with its bookkeeping (synthetic logits): {parts}"
        )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    conc = results.get("concurrency", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    ns = sorted(int(n) for n in conc)
    for name in (GRPC, ENGINE, LLAMA):
        ys = [_get(conc, str(n), name, "aggregate_tok_s") for n in ns]
        if any(y is not None for y in ys):
            left.plot(ns, [y or 0 for y in ys], marker="o", label=name)
    left.set_xlabel("concurrent streams")
    left.set_ylabel("aggregate tokens/s")
    left.set_xscale("log", base=2)
    left.set_title("Throughput against concurrency")
    left.legend()
    biggest = str(max(ns)) if ns else None
    if biggest is not None:
        for name in (GRPC, ENGINE, LLAMA):
            samples = conc[biggest].get(name, {}).get("itl_samples_ms", [])
            if samples:
                right.hist(samples, bins=50, alpha=0.5, label=name)
        right.set_xlabel(f"inter-token latency at {biggest} streams (ms)")
        right.set_ylabel("tokens")
        right.set_title("Latency distribution")
        right.legend()
    fig.suptitle(f"Parley vs llama.cpp, {results['machine']['summary']}")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write(results: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, content in ((".json", json.dumps(results, indent=2) + "\n"), (".md", table(results) + "\n")):
        path = out_dir / f"{stem}{suffix}"
        tmp = path.with_suffix(suffix + ".tmp")
        tmp.write_text(content, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    png = out_dir / f"{stem}.png"
    chart(results, png)
    return [*written, png]
