"""llama.cpp side of the benchmark. Runs in bench/.venv-llamacpp (llama-cpp-python), never in the
service's environment: reads one JSON command per line on stdin, answers one JSON line on stdout.

Commands:
  {"op": "load", "gguf": path, "n_ctx": int, "threads": int}
  {"op": "generate", "id": str, "prompt": [ids], "max_tokens": int}  greedy, end-of-sequence suppressed;
      answers {"id", "submitted", "token_times": [...], "cached": int}
  {"op": "graph", "prompt": [ids], "steps": int}  the model alone (no sampling): prefill time of the
      prompt, then `steps` single-token evaluations; answers {"prefill_s", "decode_s": [...]}
  {"op": "rss"}  peak resident memory of this process in bytes
Requests are served one at a time, as llama-cpp-python serves them; time waiting in line counts.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    import llama_cpp

    model: Any = None
    eos = -1

    def no_eos(_ids: Any, scores: np.ndarray) -> np.ndarray:
        scores[eos] = -np.inf
        return scores

    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "load":
            model = llama_cpp.Llama(
                model_path=command["gguf"],
                n_ctx=command["n_ctx"],
                n_threads=command["threads"],
                n_threads_batch=command["threads"],
                n_batch=512,
                verbose=False,
            )
            eos = model.token_eos()
            reply: dict[str, Any] = {"ok": True, "version": llama_cpp.__version__}
        elif op == "generate":
            submitted = command["submitted"]
            prompt = command["prompt"]
            before = model.n_tokens
            shared = 0
            for a, b in zip(model._input_ids[:before].tolist(), prompt, strict=False):
                if a != b:
                    break
                shared += 1
            times: list[float] = []
            generated: list[int] = []
            processors = llama_cpp.LogitsProcessorList([no_eos])
            for token in model.generate(prompt, top_k=1, temp=0.0, logits_processor=processors):
                times.append(time.monotonic())
                generated.append(token)
                if len(times) >= command["max_tokens"]:
                    break
            text = model.detokenize(generated).decode("utf-8", errors="replace")
            reply = {
                "id": command["id"], "submitted": submitted, "token_times": times,
                "cached": min(shared, len(prompt) - 1), "text": text,
            }  # fmt: skip
        elif op == "graph":
            model.reset()
            start = time.monotonic()
            model.eval(command["prompt"])
            prefill = time.monotonic() - start
            steps = []
            for _ in range(command["steps"]):
                start = time.monotonic()
                model.eval([command["prompt"][-1]])
                steps.append(time.monotonic() - start)
            model.reset()
            reply = {"prefill_s": prefill, "decode_s": steps}
        elif op == "rss":
            reply = {"rss": peak_rss()}
        else:
            reply = {"error": f"unknown op {op}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
