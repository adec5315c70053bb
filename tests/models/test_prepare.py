"""`parley prepare`: idempotence, one-line errors, and no half-written model directory on any failure."""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from models.card import load_card
from models.prepare import PrepareRequest, prepare
from service.errors import ModelError
from tests.models.tiny_gguf import write_tiny_llama


def run_cli(*args: str, limit_file_bytes: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if limit_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    return subprocess.run(
        [sys.executable, "-m", "service.cli", "prepare", "--quiet", *args],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=limit,
        timeout=120,
    )


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("src") / "tiny.gguf", "Q4_0")


def test_second_run_does_nothing_and_says_so(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    first = run_cli(str(tiny), "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert f"prepared {out}" in first.stdout
    weights = out / "model.onnx.data"
    stamp = weights.stat().st_mtime_ns
    second = run_cli(str(tiny), "--out", str(out))
    assert second.returncode == 0
    assert "is up to date" in second.stdout and "nothing to do" in second.stdout
    assert weights.stat().st_mtime_ns == stamp


def test_changed_options_convert_again(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert prepare(PrepareRequest(tiny, None, "int4", None, out), show_progress=False).converted
    again = prepare(PrepareRequest(tiny, None, "int8", None, out), show_progress=False)
    assert again.converted and load_card(out).precision == "int8"
    assert leftovers(tmp_path) == []


def write_other_arch(path: Path) -> Path:
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_q2k(tmp_path: Path) -> Path:
    """A tiny model whose first FFN weight is Q2_K, which we do not convert."""
    src = write_tiny_llama(tmp_path / "base.gguf", "F32")
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(tmp_path / "q2k.gguf", "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    for tensor in reader.tensors:
        if tensor.name == "blk.0.ffn_gate.weight":
            q2k = gguf.GGMLQuantizationType.Q2_K
            size = gguf.GGML_QUANT_SIZES[q2k][1]
            writer.add_tensor(tensor.name, np.zeros((512, size), np.uint8), raw_dtype=q2k)
        else:
            writer.add_tensor(tensor.name, np.asarray(tensor.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tmp_path / "q2k.gguf"


def truncated(tiny: Path, tmp_path: Path) -> Path:
    data = tiny.read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"this is not a gguf file at all" * 10)
    return path


SourceMaker = Callable[[Path, Path], Path]
CASES: dict[str, tuple[SourceMaker, str]] = {
    "missing file": (lambda tiny, tmp: tmp / "nope.gguf", r"nope\.gguf: no such file"),
    "truncated": (truncated, r"truncated|not a readable GGUF"),
    "not a gguf": (lambda tiny, tmp: garbage(tmp), r"not a readable GGUF file"),
    "unsupported architecture": (
        lambda tiny, tmp: write_other_arch(tmp / "qwen.gguf"),
        r"architecture 'qwen2' is not supported \(supported: llama\)",
    ),
    "unsupported tensor type": (
        lambda tiny, tmp: write_q2k(tmp),
        r"blk\.0\.ffn_gate\.weight has type Q2_K, which is not supported \(supported: F32, .*Q6_K\)",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_sources_fail_with_one_line_and_leave_nothing(tiny: Path, tmp_path: Path, case: str) -> None:
    make, message = CASES[case]
    source = make(tiny, tmp_path)
    out = tmp_path / "store" / "m"
    out.parent.mkdir()
    result = run_cli(str(source), "--out", str(out))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parley prepare: error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists() and leftovers(out.parent) == []


def test_context_beyond_the_model_is_refused(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"--max-context must be in \[1, 128\] for this model, got 4096"):
        prepare(PrepareRequest(tiny, None, "int4", 4096, tmp_path / "m"), show_progress=False)


def test_a_write_failure_leaves_no_half_written_directory(tiny: Path, tmp_path: Path) -> None:
    """A file-size limit makes the weights write fail part-way, as a full disk would."""
    out = tmp_path / "store" / "m"
    out.parent.mkdir()
    result = run_cli(str(tiny), "--out", str(out), limit_file_bytes=256 * 1024)
    assert result.returncode == 1
    assert "parley prepare: error: cannot write" in result.stderr
    assert not out.exists() and leftovers(out.parent) == []


def test_a_failed_rebuild_keeps_the_previous_directory(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "store" / "m"
    assert run_cli(str(tiny), "--out", str(out)).returncode == 0
    before = (out / "model.json").read_text()
    result = run_cli(str(tiny), "--out", str(out), "--precision", "fp32", limit_file_bytes=256 * 1024)
    assert result.returncode == 1
    assert (out / "model.json").read_text() == before
    assert leftovers(out.parent) == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda card: card.update(schema_version=99), r"schema_version 99 is not supported"),
        (lambda card: card.update(n_heads=7), r"n_heads must be a multiple of n_kv_heads"),
        (lambda card: card.pop("stop_token_ids"), r"invalid model card"),
        (lambda card: card.update(eos_token_id=10**6), r"eos_token_id 1000000 is outside the vocabulary"),
    ],
    ids=["schema version", "heads", "missing field", "eos range"],
)
def test_card_is_validated_on_load(tiny: Path, tmp_path: Path, edit: object, message: str) -> None:
    out = prepare(PrepareRequest(tiny, None, "int4", None, tmp_path / "m"), show_progress=False).model_dir
    card = json.loads((out / "model.json").read_text())
    edit(card)  # type: ignore[operator]
    (out / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message):
        load_card(out)


def test_unreadable_card_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable model card"):
        load_card(tmp_path)
    with pytest.raises(ModelError, match="not a model directory"):
        load_card(tmp_path / "elsewhere")
