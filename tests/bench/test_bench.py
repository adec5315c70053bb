"""The benchmark harness still works: `--quick` end to end on a tiny model (a real `parley serve`, the
in-process engine; llama.cpp only where its environment exists). No speed is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.run import main
from bench.subjects import LlamaCppSubject
from models.prepare import PrepareRequest, prepare
from tests.models.tiny_gguf import TinySpec, write_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    gguf = write_tiny_llama(root / "tiny.gguf", "Q4_0", TinySpec(context=1024))
    model_dir = prepare(
        PrepareRequest(gguf, "tiny", "int4", None, root / "model"), show_progress=False
    ).model_dir
    return gguf, model_dir


def test_quick_run_writes_every_result(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf, model_dir = tiny
    args = [
        "--quick",
        "--model-dir",
        str(model_dir),
        "--gguf",
        str(gguf),
        "--out",
        str(tmp_path),
        "--max-batch",
        "4",
    ]
    if LlamaCppSubject.available() is not None:
        print(f"llama.cpp subject skipped: {LlamaCppSubject.available()}")
        args.append("--no-llamacpp")
    assert main([*args, "--no-progress"]) == 0
    results = json.loads((tmp_path / "quick.json").read_text())
    for subject in ("parley-grpc", "parley-engine"):
        assert results["single_stream"][subject]["decode_tok_s"] > 0
        assert results["ttft"]["128"][subject]["ttft_ms"] > 0
        assert results["concurrency"]["4"][subject]["aggregate_tok_s"] > 0
        assert len(results["conversation"][subject]["ttft_ms_per_turn"]) == 3
    assert results["graph"]["parley-graph"]["decode_ms_batch_8"] > 0
    session = results["session"]
    assert len(session["cached_tokens_per_turn"]) == 3
    assert session["cached_tokens_per_turn"][1] > 0  # the session's second turn reuses its K/V
    assert results["peak_rss_mib"]["parley-grpc"] > 0
    assert (tmp_path / "quick.png").stat().st_size > 10_000
    table = (tmp_path / "quick.md").read_text()
    assert "Goals (DESIGN.md §6)" in table and "single-stream decode" in table
    assert "Goals" in capsys.readouterr().out
