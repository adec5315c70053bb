"""GGUF weights -> the forms the ONNX graph uses.

Every quantized GGUF type we support is *affine per block*: w = scale · code + offset, with integer codes
and one scale (and offset) per group of 16 or 32 inputs. We recover codes, scales and offsets exactly
(the codes by "probing": dequantizing a copy of the blocks whose scale fields are set to 1 and offsets to
0, which reuses gguf's own layout decoding), then pack them for ONNX Runtime's MatMulNBits:

    w = scale · (u − z) + offset'      u: unsigned `bits`-bit code, z = 2^(bits−1) (MatMulNBits' default)

An offset' that is not zero (Q4_1, Q4_K, ...: the integer zero point cannot hold it) becomes a separate
fp32 term in the graph: y += blocksum(x) · offset'ᵀ (see graph_builder). This is exact, and keeps
MatMulNBits on its fast path (integer zero points only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gguf
import numpy as np

from models.card import Precision
from service.errors import ModelError

_F16_ONE = np.frombuffer(np.float16(1.0).tobytes(), dtype=np.uint8)
_F16_ZERO = np.zeros(2, dtype=np.uint8)


@dataclass(frozen=True)
class AffineBlocks:
    """w[n, k] = scales[n, k // group] · codes[n, k] + offsets[n, k // group] (offsets None = 0)."""

    codes: np.ndarray  # int16 [N, K]
    scales: np.ndarray  # float32 [N, K // group]
    offsets: np.ndarray | None  # float32 [N, K // group]
    group: int
    code_range: tuple[int, int]  # inclusive bounds every code of this format lies in

    @property
    def code_span(self) -> int:
        return self.code_range[1] - self.code_range[0] + 1

    def dequantize(self) -> np.ndarray:
        n, k = self.codes.shape
        grouped = self.codes.reshape(n, k // self.group, self.group).astype(np.float32)
        values = grouped * self.scales[..., None]
        if self.offsets is not None:
            values = values + self.offsets[..., None]
        result: np.ndarray = values.reshape(n, k)
        return result


@dataclass(frozen=True)
class PackedLinear:
    """Inputs of one MatMulNBits node (+ the optional offset term). Weight is [N, K], y = x · wᵀ."""

    n: int
    k: int
    bits: int
    block_size: int
    codes: np.ndarray  # uint8 [N, K // block_size, block_size · bits / 8]
    scales: np.ndarray  # float32 [N, K // block_size]
    offsets: np.ndarray | None  # float32 [N, K // block_size]: added as blocksum(x) · offsetsᵀ


@dataclass(frozen=True)
class _Format:
    group: int
    code_range: tuple[int, int]
    unit_patch: Callable[[np.ndarray], None]  # sets scales to 1 and offsets to 0 in raw blocks, in place
    scales_offsets: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]  # per block: [B, groups]


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    return blocks[:, start : start + 2].copy().view(np.float16).astype(np.float32)


def _set(blocks: np.ndarray, start: int, value: np.ndarray) -> None:
    blocks[:, start : start + len(value)] = value


def _scale_only(start: int) -> Callable[[np.ndarray], tuple[np.ndarray, None]]:
    return lambda b: (_f16(b, start), None)


def _scale_and_min(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _f16(b, 0), _f16(b, 2)


_K_UNIT_SCALES = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=np.uint8)  # every 6-bit scale 1, min 0


def _k_patch(b: np.ndarray) -> None:
    _set(b, 0, _F16_ONE)
    _set(b, 2, _F16_ZERO)
    _set(b, 4, _K_UNIT_SCALES)


def _k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sc, mins = gguf.quants.Q4_K.get_scale_min(b[:, 4:16].copy())
    return _f16(b, 0) * sc.astype(np.float32), -_f16(b, 2) * mins.astype(np.float32)


def _q6k_patch(b: np.ndarray) -> None:
    b[:, 192:208] = 1
    _set(b, 208, _F16_ONE)


def _q6k_scales(b: np.ndarray) -> tuple[np.ndarray, None]:
    return _f16(b, 208) * b[:, 192:208].copy().view(np.int8).astype(np.float32), None


def _patch_scale(start: int) -> Callable[[np.ndarray], None]:
    return lambda b: _set(b, start, _F16_ONE)


def _patch_scale_min(b: np.ndarray) -> None:
    _set(b, 0, _F16_ONE)
    _set(b, 2, _F16_ZERO)


_FORMATS: dict[str, _Format] = {
    "Q4_0": _Format(32, (-8, 7), _patch_scale(0), _scale_only(0)),
    "Q4_1": _Format(32, (0, 15), _patch_scale_min, _scale_and_min),
    "Q5_0": _Format(32, (-16, 15), _patch_scale(0), _scale_only(0)),
    "Q5_1": _Format(32, (0, 31), _patch_scale_min, _scale_and_min),
    "Q8_0": _Format(32, (-128, 127), _patch_scale(0), _scale_only(0)),
    "Q4_K": _Format(32, (0, 15), _k_patch, _k_scales),
    "Q5_K": _Format(32, (0, 31), _k_patch, _k_scales),
    "Q6_K": _Format(16, (-32, 31), _q6k_patch, _q6k_scales),
}
FLOAT_TYPES = ("F32", "F16", "BF16")
# Q6_K is exact only as MatMulNBits blocks of 16, whose int8-activation kernel (accuracy_level 4) is
# inaccurate in ONNX Runtime 1.31: 25% max logit error on a synthetic model against 5% for blocks of 32.
# Re-quantizing to 8-bit blocks of 32 costs at most half a step of max|w|/127 per block.
REQUANTIZED_TYPES = ("Q6_K",)


def type_name(tensor: gguf.ReaderTensor) -> str:
    return str(tensor.tensor_type.name)


def shape_nk(tensor: gguf.ReaderTensor) -> tuple[int, int]:
    """(N, K) of a 2-D weight: ggml's dims are [K, N] (innermost first)."""
    k, n = (int(d) for d in tensor.shape)
    return n, k


def dequantize(tensor: gguf.ReaderTensor) -> np.ndarray:
    """Exact float32 values of a tensor, in numpy order ([N, K] for a weight, [K] for a norm)."""
    values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    shape = tuple(int(d) for d in reversed(tensor.shape))
    return np.ascontiguousarray(values.reshape(shape), dtype=np.float32)


def exact_blocks(tensor: gguf.ReaderTensor) -> AffineBlocks:
    """Codes, scales and offsets of a quantized tensor, bit-exact to ggml's dequantization."""
    name = type_name(tensor)
    fmt = _FORMATS.get(name)
    if fmt is None:
        raise ModelError(f"tensor {tensor.name}: type {name} has no exact block form")
    n, k = shape_nk(tensor)
    block_bytes = gguf.GGML_QUANT_SIZES[tensor.tensor_type][1]
    raw = np.asarray(tensor.data, dtype=np.uint8).reshape(-1, block_bytes)
    scales, offsets = fmt.scales_offsets(raw)
    probe = raw.copy()
    fmt.unit_patch(probe)
    codes_f = gguf.quants.dequantize(probe, tensor.tensor_type)
    codes = np.rint(codes_f).astype(np.int16)
    lo, hi = fmt.code_range
    if not np.array_equal(codes, codes_f) or codes.min() < lo or codes.max() > hi:
        raise ModelError(
            f"tensor {tensor.name}: {name} blocks did not decode to integer codes in [{lo}, {hi}]"
        )
    groups = k // fmt.group
    return AffineBlocks(
        codes=codes.reshape(n, k),
        scales=np.ascontiguousarray(scales.reshape(n, groups), dtype=np.float32),
        offsets=None
        if offsets is None
        else np.ascontiguousarray(offsets.reshape(n, groups), dtype=np.float32),
        group=fmt.group,
        code_range=fmt.code_range,
    )


def quantize_rtn(values: np.ndarray, bits: int, group: int = 32) -> AffineBlocks:
    """Round-to-nearest quantization of float weights [N, K]: 4-bit asymmetric (min + scale, like Q4_1),
    8-bit symmetric (like Q8_0). Used for float GGUF tensors at int4/int8 precision."""
    n, k = values.shape
    if k % group:
        raise ModelError(f"cannot quantize a weight with {k} inputs in blocks of {group}")
    blocks = values.reshape(n, k // group, group).astype(np.float32)
    if bits == 8:
        amax = np.abs(blocks).max(axis=-1)
        scales = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        codes = np.clip(np.rint(blocks / scales[..., None]), -127, 127)
        return AffineBlocks(codes.astype(np.int16).reshape(n, k), scales, None, group, (-127, 127))
    levels = (1 << bits) - 1
    lo, hi = blocks.min(axis=-1), blocks.max(axis=-1)
    scales = np.where(hi > lo, (hi - lo) / levels, 1.0).astype(np.float32)
    codes = np.clip(np.rint((blocks - lo[..., None]) / scales[..., None]), 0, levels)
    return AffineBlocks(
        codes.astype(np.int16).reshape(n, k), scales, lo.astype(np.float32), group, (0, levels)
    )


def affine_blocks(tensor: gguf.ReaderTensor, precision: Precision) -> AffineBlocks:
    """The block form of a weight for a quantized precision: exact for quantized GGUF types (but Q6_K),
    round-to-nearest for float ones (4-bit asymmetric at int4, 8-bit symmetric at int8)."""
    name = type_name(tensor)
    if name in FLOAT_TYPES:
        return quantize_rtn(dequantize(tensor), bits=4 if precision == "int4" else 8)
    if name in REQUANTIZED_TYPES:
        return quantize_rtn(dequantize(tensor), bits=8)
    return exact_blocks(tensor)


def choose_format(parts: Sequence[AffineBlocks], precision: Precision) -> tuple[int, int]:
    """(bits, block_size) that hold every part exactly: 4 bits only when all codes span ≤ 16 values and
    the precision is int4; the block is the finest group among the parts."""
    bits = 4 if precision == "int4" and all(p.code_span <= 16 for p in parts) else 8
    return bits, min(p.group for p in parts)


def pack(blocks: AffineBlocks, bits: int, block_size: int) -> PackedLinear:
    """Pack into MatMulNBits layout (u = code + shift, w = scale·(u − z) + offset')."""
    n, k = blocks.codes.shape
    if blocks.group % block_size or k % block_size:
        raise ModelError(f"cannot pack blocks of {blocks.group} into MatMulNBits blocks of {block_size}")
    zero_point = 1 << (bits - 1)
    lo, hi = blocks.code_range
    if lo >= -zero_point and hi < zero_point:
        shift = zero_point  # signed codes: u − z = code, no offset needed
    elif lo >= 0 and hi < (1 << bits):
        shift = 0
    else:
        raise ModelError(f"codes in [{lo}, {hi}] do not fit {bits} bits")
    repeat = blocks.group // block_size
    scales = np.repeat(blocks.scales, repeat, axis=1)
    offsets = None if blocks.offsets is None else np.repeat(blocks.offsets, repeat, axis=1)
    if shift != zero_point:
        correction = scales * float(zero_point - shift)
        offsets = correction if offsets is None else offsets + correction
    u = (blocks.codes.astype(np.int32) + shift).astype(np.uint8).reshape(n, k // block_size, block_size)
    if bits == 4:
        pairs = u.reshape(n, k // block_size, block_size // 2, 2)
        packed: np.ndarray = pairs[..., 0] | (pairs[..., 1] << 4)
    else:
        packed = u
    return PackedLinear(
        n=n,
        k=k,
        bits=bits,
        block_size=block_size,
        codes=np.ascontiguousarray(packed, dtype=np.uint8),
        scales=np.ascontiguousarray(scales, dtype=np.float32),
        offsets=None if offsets is None else np.ascontiguousarray(offsets, dtype=np.float32),
    )


def pack_concatenated(parts: Sequence[AffineBlocks], precision: Precision) -> PackedLinear:
    """Pack weights that share an input (Q, K, V; gate, up) as one MatMulNBits over their stacked rows."""
    bits, block_size = choose_format(parts, precision)
    packed = [pack(p, bits, block_size) for p in parts]
    k = packed[0].k
    if any(p.k != k for p in packed):
        raise ModelError("cannot stack weights with different input sizes")
    if all(p.offsets is None for p in packed):
        offsets = None
    else:
        offsets = np.concatenate(
            [p.offsets if p.offsets is not None else np.zeros_like(p.scales) for p in packed], axis=0
        )
    return PackedLinear(
        n=sum(p.n for p in packed),
        k=k,
        bits=bits,
        block_size=block_size,
        codes=np.concatenate([p.codes for p in packed], axis=0),
        scales=np.concatenate([p.scales for p in packed], axis=0),
        offsets=offsets,
    )


def unpack(linear: PackedLinear) -> np.ndarray:
    """Float32 [N, K] values a packed linear stands for (tests and the embedding's reference)."""
    if linear.bits == 4:
        low = linear.codes & 0x0F
        high = linear.codes >> 4
        u = np.stack([low, high], axis=-1).reshape(linear.n, -1, linear.block_size)
    else:
        u = linear.codes
    values = (u.astype(np.float32) - (1 << (linear.bits - 1))) * linear.scales[..., None]
    if linear.offsets is not None:
        values = values + linear.offsets[..., None]
    result: np.ndarray = values.reshape(linear.n, linear.k)
    return result
