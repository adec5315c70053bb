"""`make bench` / `parley bench`: Parley side by side with llama.cpp on the same GGUF, machine and run.

    python -m bench.run            full run (about 10-15 minutes), results in bench/results/
    python -m bench.run --quick    a sanity check in under two minutes

Not a test: nothing asserts a speed. Figures are medians over interleaved repetitions, reported beside
llama.cpp's and as ratios to them, with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from tqdm import tqdm

from bench import sampler_bench
from bench.profile_step import graph_speed, profile_decode
from bench.report import GRPC, LLAMA, table, write
from bench.scenarios import Plan, Prompts, concurrency, conversation, single_stream, time_to_first_token
from bench.subjects import BenchModel, EngineSubject, GrpcSubject, LlamaCppSubject, Subject
from bench.timing import median
from models.card import load_card
from service.engine.runner import available_cores

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO / "models" / "store" / "smollm2-135m-instruct"
DEFAULT_GGUF = REPO / "models" / "store" / ".sources" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT_TEXT = REPO / "tests" / "fixtures" / "eval" / "mixed.txt"


def machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = available_cores()
    import onnxruntime

    return {
        "cpu": cpu,
        "cores": cores,
        "memory_gib": round(memory, 1),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "summary": f"{cpu}, {cores} cores, {memory:.0f} GiB",
    }


async def session_scenario(subject: GrpcSubject, plan: Plan, progress: Any) -> dict[str, Any]:
    """A bidirectional session: the server keeps the conversation and its K/V between turns."""
    assert subject.client is not None
    ttfts, cached = [], []
    async with subject.client.session(
        system_prompt="You are a storyteller.", temperature=0.0, max_tokens=plan.turn_tokens
    ) as session:
        for turn in range(plan.conversation_turns):
            progress(f"{plan.conversation_turns}-turn session, turn {turn + 1}: {GRPC}")
            sent = time.monotonic()
            first = None
            handle = await session.send(f"Question {turn}: and what happened next?")
            async for chunk in handle:
                if first is None and chunk.choices:
                    first = time.monotonic()
            done = await handle.result()
            ttfts.append((first or time.monotonic()) - sent)
            cached.append(done.usage.cached_tokens)
    return {
        "ttft_ms_per_turn": [1000 * t for t in ttfts],
        "ttft_ms_later_turns": 1000 * median(ttfts[1:]) if len(ttfts) > 1 else float("nan"),
        "cached_tokens_per_turn": cached,
    }


async def graph_scenario(
    args: argparse.Namespace, llama: LlamaCppSubject | None, prompts: Prompts, quick: bool, progress: Any
) -> dict[str, Any]:
    """The model alone, without engine, sampling or transport: Parley's ONNX graph (decode steps at batch
    1/4/8, prefill) beside llama.cpp's own evaluation (batch 1, prefill), interleaved, medians."""
    prompt = prompts.make(128 if quick else 512)
    runs: dict[str, list[dict[str, float]]] = {"parley-graph": [], LLAMA: []}
    for _ in range(1 if quick else 5):
        progress("the model alone: parley-graph")
        runs["parley-graph"].append(graph_speed(args.model_dir, args.threads, (1, 4, 8), 128, prompt))
        if llama is not None:
            progress("the model alone: llama.cpp")
            prefill_s, steps = await llama.graph(prompt, 20 if quick else 40)
            runs[LLAMA].append(
                {"decode_ms_batch_1": 1000 * median(steps), "prefill_tok_s": len(prompt) / prefill_s}
            )
    out: dict[str, Any] = {
        name: {key: median([r[key] for r in rs]) for key in rs[0]} for name, rs in runs.items() if rs
    }
    if runs[LLAMA]:  # back-to-back pairs: drift on a shared machine cancels within a pair
        pairs = list(zip(runs["parley-graph"], runs[LLAMA], strict=True))
        out["paired"] = {
            "decode_batch_1_speedup": median(
                [b["decode_ms_batch_1"] / a["decode_ms_batch_1"] for a, b in pairs]
            ),
            "prefill_speedup": median([a["prefill_tok_s"] / b["prefill_tok_s"] for a, b in pairs]),
        }
    return out | {"prompt_tokens": len(prompt), "context": 128}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan.quick() if args.quick else Plan.full()
    card = load_card(args.model_dir)
    model = BenchModel(
        args.model_dir, args.gguf, args.max_batch, min(card.context_window, args.kv_capacity), args.threads
    )
    tokenizer = Tokenizer.from_file(str(args.model_dir / card.tokenizer_file))
    prompts = Prompts(tokenizer, PROMPT_TEXT.read_text(encoding="utf-8"))
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full",
        "model": f"{card.name} ({card.precision}, from {card.source.file_name})",
        "machine": machine(),
        "settings": {
            "max_batch": model.max_batch,
            "kv_capacity": model.kv_capacity,
            "threads": model.threads,
        },
        "skipped": {},
    }
    subjects: list[Subject] = []
    grpc_subject = GrpcSubject(model)
    steps = 6 + (2 if not args.quick else 0)
    bar = tqdm(total=steps, desc="bench", unit="step", file=sys.stderr, disable=args.no_progress)

    def progress(what: str) -> None:
        bar.set_postfix_str(what[:70])

    try:
        progress("starting parley serve")
        await grpc_subject.start()
        subjects.append(grpc_subject)
        subjects.append(EngineSubject(model))
        why_not = LlamaCppSubject.available() if not args.no_llamacpp else "--no-llamacpp"
        llama: LlamaCppSubject | None = None
        if why_not is None:
            llama = LlamaCppSubject(model)
            await llama.start()
            subjects.append(llama)
            results["llamacpp_version"] = llama.version
        else:
            results["skipped"][LLAMA] = why_not
            print(f"bench: llama.cpp not measured: {why_not}", file=sys.stderr)
        bar.update()
        for subject in subjects:  # warm-up: first calls pay for allocations and thread start-up
            await subject.stream(prompts.make(32), 4)
        bar.update()
        results["graph"] = await graph_scenario(args, llama, prompts, args.quick, progress)
        results["single_stream"] = await single_stream(subjects, prompts, plan, progress)
        bar.update()
        results["ttft"] = await time_to_first_token(subjects, prompts, plan, progress)
        bar.update()
        results["concurrency"] = await concurrency(subjects, prompts, plan, progress)
        bar.update()
        results["conversation"] = await conversation(subjects, prompts, plan, progress)
        results["session"] = await session_scenario(grpc_subject, plan, progress)
        bar.update()
        results["peak_rss_mib"] = {s.name: rss / 2**20 for s in subjects if (rss := s.peak_rss()) is not None}
        if not args.quick:
            progress("profiling one decode step")
            results["profile"] = {  # batch 8 at the mixed parameters: the sampling head's share below
                "1": profile_decode(args.model_dir, 1, 256, args.threads),
                "8": profile_decode(args.model_dir, 8, 256, args.threads, sampler_bench.mix_head("mixed", 8)),
            }
            progress("timing the sampler at batch 8")
            results["sampler"] = sampler_bench.per_step_ms(batch=8)
            bar.update(2)
    finally:
        for subject in subjects or [grpc_subject]:
            await subject.close()
        bar.close()
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parley bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a sanity check in under two minutes")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="prepared model directory")
    parser.add_argument(
        "--gguf", type=Path, default=DEFAULT_GGUF, help="the GGUF llama.cpp runs (the model's source)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where results go")
    parser.add_argument("--max-batch", type=int, default=16, help="Parley's KV slots (default 16)")
    parser.add_argument(
        "--kv-capacity", type=int, default=2048, help="tokens per slot / llama.cpp n_ctx (default 2048)"
    )
    parser.add_argument("--threads", type=int, default=available_cores(), help="threads for both engines")
    parser.add_argument("--no-llamacpp", action="store_true", help="measure Parley alone")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for path, what in ((args.model_dir / "model.json", "model directory"), (args.gguf, "GGUF")):
        if not path.exists():
            print(f"bench: error: {what} {path} is missing (run `make model`)", file=sys.stderr)
            return 1
    results = asyncio.run(run(args))
    stem = "quick" if args.quick else "latest"
    paths = write(results, args.out, stem)
    print(table(results))
    print("\nwritten: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
