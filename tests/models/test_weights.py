"""GGUF blocks → MatMulNBits: the recovered codes/scales/offsets are exact, and packing keeps them exact."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from models.weights import (
    AffineBlocks,
    choose_format,
    dequantize,
    exact_blocks,
    pack,
    pack_concatenated,
    quantize_rtn,
    unpack,
)
from tests.models.tiny_gguf import write_tiny_llama

EXACT_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")


@pytest.fixture(scope="module")
def tensors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, gguf.ReaderTensor]:
    """One ffn_gate weight ([512, 256]) of each quantized type."""
    out = {}
    for type_name in EXACT_TYPES:
        path = write_tiny_llama(tmp_path_factory.mktemp(type_name) / "m.gguf", type_name)
        reader = gguf.GGUFReader(path)
        out[type_name] = next(t for t in reader.tensors if t.name == "blk.0.ffn_gate.weight")
    return out


@pytest.mark.parametrize("type_name", EXACT_TYPES, ids=EXACT_TYPES)
def test_block_form_reproduces_ggml_dequantization(
    tensors: dict[str, gguf.ReaderTensor], type_name: str
) -> None:
    tensor = tensors[type_name]
    blocks = exact_blocks(tensor)
    reference = dequantize(tensor)
    assert blocks.codes.shape == reference.shape == (512, 256)
    np.testing.assert_allclose(blocks.dequantize(), reference, rtol=1e-6, atol=1e-7)
    lo, hi = blocks.code_range
    assert lo <= blocks.codes.min() and blocks.codes.max() <= hi


@pytest.mark.parametrize("precision", ["int4", "int8"])
@pytest.mark.parametrize("type_name", EXACT_TYPES, ids=EXACT_TYPES)
def test_packing_is_exact(tensors: dict[str, gguf.ReaderTensor], type_name: str, precision: str) -> None:
    blocks = exact_blocks(tensors[type_name])
    bits, block_size = choose_format([blocks], precision)  # type: ignore[arg-type]
    packed = pack(blocks, bits, block_size)
    assert packed.codes.dtype == np.uint8
    assert packed.codes.shape == (512, 256 // block_size, block_size * bits // 8)
    np.testing.assert_allclose(unpack(packed), dequantize(tensors[type_name]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("type_name", "precision", "expected"),
    [
        ("Q4_0", "int4", (4, 32)),
        ("Q4_1", "int4", (4, 32)),
        ("Q4_K", "int4", (4, 32)),
        ("Q5_0", "int4", (8, 32)),  # 32 code values need 8-bit blocks
        ("Q8_0", "int4", (8, 32)),
        ("Q4_0", "int8", (8, 32)),
        ("Q6_K", "int8", (8, 16)),
    ],
    ids=lambda v: str(v),
)
def test_format_choice(
    tensors: dict[str, gguf.ReaderTensor], type_name: str, precision: str, expected: tuple[int, int]
) -> None:
    assert choose_format([exact_blocks(tensors[type_name])], precision) == expected  # type: ignore[arg-type]


def test_symmetric_codes_need_no_offset_term(tensors: dict[str, gguf.ReaderTensor]) -> None:
    assert pack(exact_blocks(tensors["Q4_0"]), 4, 32).offsets is None
    assert pack(exact_blocks(tensors["Q8_0"]), 8, 32).offsets is None
    # Q4_1's per-block minimum cannot be an integer zero point: it becomes the exact offset term.
    assert pack(exact_blocks(tensors["Q4_1"]), 4, 32).offsets is not None


def test_mixed_types_stack_in_the_widest_format(tensors: dict[str, gguf.ReaderTensor]) -> None:
    parts = [exact_blocks(tensors["Q4_K"]), exact_blocks(tensors["Q6_K"])]
    stacked = pack_concatenated(parts, "int4")
    assert (stacked.bits, stacked.block_size, stacked.n) == (8, 16, 1024)
    expected = np.concatenate([dequantize(tensors["Q4_K"]), dequantize(tensors["Q6_K"])])
    np.testing.assert_allclose(unpack(stacked), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("bits", "steps"), [(4, 15), (8, 254)])
def test_round_to_nearest_error_is_half_a_step(bits: int, steps: int) -> None:
    values = np.random.default_rng(1).standard_normal((64, 128)).astype(np.float32)
    blocks: AffineBlocks = quantize_rtn(values, bits=bits)
    grouped = values.reshape(64, 4, 32)
    step = (grouped.max(-1) - grouped.min(-1)) / steps if bits == 4 else np.abs(grouped).max(-1) / 127
    error = np.abs(blocks.dequantize() - values).reshape(64, 4, 32).max(-1)
    assert np.all(error <= step / 2 + 1e-6)


def test_float_weights_are_not_exact_blocks(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(write_tiny_llama(tmp_path / "f32.gguf", "F32"))
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    with pytest.raises(Exception, match="no exact block form"):
        exact_blocks(tensor)
