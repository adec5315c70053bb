"""Converted graphs against the independent numpy reference, on tiny synthetic GGUFs of every supported
tensor type and every precision. Stepping one token at a time also exercises the in-place KV cache."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from models.card import load_card
from models.prepare import PrepareRequest, prepare
from service.engine import kernels as parley_kernels
from service.engine.runner import ModelRunner, RunnerOptions
from tests.models.reference import ReferenceLlama
from tests.models.tiny_gguf import ALL_TYPES, TinySpec, write_tiny_llama

TOKENS = list(range(3, 43))  # 40 byte tokens


def fast_quant_linear_available() -> bool:
    built = parley_kernels.library()
    return built is not None and parley_kernels.fast_quant_linear(built)


# Bound on max |Δ logit| / max |reference logit| per (precision, weight origin). fp32 is exact but for
# float rounding; fp16 rounds activations; int4/int8 run with int8 activations (accuracy_level 4),
# about 5% on these random weights; float weights at int4 are re-quantized to 4 bits (round to nearest).
BOUNDS = {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.12, "int4": 0.12}
RTN4_BOUND = 0.75


def run_graph(model_dir: Path, tokens: list[int]) -> np.ndarray:
    """The converted graph as written, on ONNX Runtime's own kernels (Parley's kernels, which keep an fp16
    KV cache, are held to their own bounds in tests/engine/test_kernels.py)."""
    runner = ModelRunner(model_dir, RunnerOptions(max_batch=1, kv_capacity=64, kernels="off"))
    return np.array([runner.decode(np.array([t]), np.array([i])).copy()[0] for i, t in enumerate(tokens)])


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    out = {}
    for type_name in ALL_TYPES:
        path = write_tiny_llama(tmp_path_factory.mktemp(type_name) / "tiny.gguf", type_name)
        out[type_name] = (path, ReferenceLlama(path).logits(TOKENS))
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int4"])
@pytest.mark.parametrize("type_name", ALL_TYPES, ids=ALL_TYPES)
def test_graph_matches_reference(
    tiny_models: dict[str, tuple[Path, np.ndarray]], tmp_path: Path, type_name: str, precision: str
) -> None:
    path, reference = tiny_models[type_name]
    result = prepare(PrepareRequest(path, None, precision, None, tmp_path / "m"), show_progress=False)  # type: ignore[arg-type]
    logits = run_graph(result.model_dir, TOKENS)
    relative = np.abs(logits - reference).max() / np.abs(reference).max()
    bound = RTN4_BOUND if precision == "int4" and type_name in ("F32", "F16", "BF16") else BOUNDS[precision]
    assert relative <= bound, f"{type_name} at {precision}: relative error {relative:.2e} > {bound}"


def test_untied_output_weight_and_gqa_shapes(tmp_path: Path) -> None:
    spec = TinySpec(n_heads=8, n_kv_heads=2, tied=False)
    path = write_tiny_llama(tmp_path / "untied.gguf", "Q8_0", spec)
    reference = ReferenceLlama(path).logits(TOKENS[:12])
    result = prepare(PrepareRequest(path, None, "fp32", None, tmp_path / "m"), show_progress=False)
    np.testing.assert_allclose(
        run_graph(result.model_dir, TOKENS[:12]), reference, atol=1e-4 * np.abs(reference).max()
    )


@pytest.mark.parametrize("kernels", ["off", "on"])
def test_prefill_in_chunks_equals_stepping(
    tiny_models: dict[str, tuple[Path, np.ndarray]], tmp_path: Path, kernels: Literal["off", "on"]
) -> None:
    """Two prefill chunks on slot 1 give the logits that stepping token by token on slot 0 gives, on ONNX
    Runtime's kernels and on Parley's (whose fp16 KV cache rounds each key and value before any query
    reads it, whichever path wrote it); both stay within their precision of the reference."""
    if kernels == "on" and not fast_quant_linear_available():
        pytest.skip("Parley's kernels are not built for this CPU (they need AVX-512 VNNI)")
    path, reference = tiny_models["Q4_0"]
    model_dir = prepare(
        PrepareRequest(path, None, "fp32", None, tmp_path / "m"), show_progress=False
    ).model_dir
    runner = ModelRunner(model_dir, RunnerOptions(max_batch=2, kv_capacity=64, kernels=kernels))
    ids = np.array(TOKENS)
    runner.prefill(1, ids[:25], 0)  # slot 1, two chunks
    chunked = runner.prefill(1, ids[25:], 25).copy()
    stepped = [runner.decode(np.array([t]), np.array([i])).copy()[0] for i, t in enumerate(TOKENS)][-1]
    scale = np.abs(reference).max()
    np.testing.assert_allclose(chunked, stepped, atol=1e-5 * scale)
    np.testing.assert_allclose(chunked, reference[-1], atol=(1e-4 if kernels == "off" else 2e-3) * scale)


def test_card_describes_the_graph(tiny_models: dict[str, tuple[Path, np.ndarray]], tmp_path: Path) -> None:
    path, _ = tiny_models["Q4_1"]
    model_dir = prepare(
        PrepareRequest(path, "tiny", "int4", 96, tmp_path / "m"), show_progress=False
    ).model_dir
    card = load_card(model_dir)
    assert (card.name, card.precision, card.context_window, card.train_context) == ("tiny", "int4", 96, 128)
    assert (card.n_layers, card.hidden_size, card.n_heads, card.n_kv_heads, card.head_dim) == (
        2,
        256,
        4,
        2,
        64,
    )
    assert card.vocab_size == 261 and card.bos_token_id == 1 and card.eos_token_id == 2
    assert card.special_tokens == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert card.stop_token_ids == [0, 2]
    assert card.chat_template is not None and "<|im_start|>" in card.chat_template
    assert card.graph.kv_dtype == "float32"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "model.json",
        "model.onnx",
        "model.onnx.data",
        "tokenizer.json",
    ]
