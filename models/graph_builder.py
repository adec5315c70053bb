"""Build the ONNX Runtime graph of a llama-family model (DESIGN.md §4):

    input_ids [B, S] ─ embed ─┬─ 30× [ RMSNorm → QKV → GroupQueryAttention(rotary, KV in place) → O
                              │        → Skip+RMSNorm → gate·up → SiLU·mul → down ] ─ last position
                              └─ Skip+RMSNorm → LM head → logits [B, 1, V]

One graph serves prefill (S > 1, batch 1) and decode (S = 1, any batch). `past_key_values.{i}.*` and
`present.{i}.*` are meant to be bound to the same buffers, so attention writes new rows in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from models.card import GraphIO, Precision
from models.gguf_source import GGUFSource
from models.onnx_writer import GraphAssembler
from models.weights import (
    AffineBlocks,
    PackedLinear,
    affine_blocks,
    dequantize,
    exact_blocks,
    pack,
    pack_concatenated,
    quantize_rtn,
    type_name,
)

MS = "com.microsoft"
INT4_ACCURACY_LEVEL = 4  # int8 activations: 14-25x faster than level 0 on CPU (DESIGN.md §5)


@dataclass(frozen=True)
class GraphOptions:
    precision: Precision
    max_context: int
    io: GraphIO


class LlamaGraph:
    """Assembles the graph for one model; `build` adds every node and initializer."""

    def __init__(self, src: GGUFSource, options: GraphOptions, asm: GraphAssembler) -> None:
        self.src = src
        self.spec = src.spec
        self.opt = options
        self.asm = asm
        self.half = options.precision == "fp16"
        self.np_dtype = np.float16 if self.half else np.float32
        self.onnx_dtype = TensorProto.FLOAT16 if self.half else TensorProto.FLOAT
        self.quantized = options.precision in ("int4", "int8")
        self._blocksums: dict[tuple[str, int], str] = {}

    # --- helpers --------------------------------------------------------------------------------
    def _float(self, name: str, values: np.ndarray) -> str:
        return self.asm.weight(name, values.astype(self.np_dtype))

    def _blocksum(self, x: str, k: int, block_size: int) -> str:
        """Σ of x over each block of `block_size` inputs: [B, S, K] -> [B, S, K / block_size]."""
        key = (x, block_size)
        if key not in self._blocksums:
            shape = self.asm.constant(np.array([0, 0, k // block_size, block_size], dtype=np.int64))
            grouped = self.asm.node1("Reshape", [x, shape], name="blocksum/reshape")
            axes = self.asm.constant(np.array([-1], dtype=np.int64))
            self._blocksums[key] = self.asm.node1("ReduceSum", [grouped, axes], name="blocksum", keepdims=0)
        return self._blocksums[key]

    def _packed_linear(self, x: str, linear: PackedLinear, name: str) -> str:
        codes = self.asm.weight(f"{name}.codes", linear.codes)
        scales = self.asm.weight(f"{name}.scales", linear.scales)
        y = self.asm.node1(
            "MatMulNBits",
            [x, codes, scales],
            name=name,
            domain=MS,
            K=linear.k,
            N=linear.n,
            bits=linear.bits,
            block_size=linear.block_size,
            accuracy_level=INT4_ACCURACY_LEVEL,
        )
        if linear.offsets is None:
            return y
        # Exact per-block offsets (Q4_1 mins etc.): y += blocksum(x) · offsetsᵀ, in fp32.
        offsets_t = self.asm.weight(f"{name}.offsets_t", np.ascontiguousarray(linear.offsets.T))
        term = self.asm.node1(
            "MatMul", [self._blocksum(x, linear.k, linear.block_size), offsets_t], name=f"{name}/offset"
        )
        return self.asm.node1("Add", [y, term], name=f"{name}/add_offset")

    def _linear(self, x: str, tensor_names: list[str], name: str) -> str:
        """y = x · [W₁; W₂; …]ᵀ for weights that share an input, as one matmul."""
        tensors = [self.src.tensor(t) for t in tensor_names]
        if self.quantized:
            parts = [affine_blocks(t, self.opt.precision) for t in tensors]
            return self._packed_linear(x, pack_concatenated(parts, self.opt.precision), name)
        dense = np.concatenate([dequantize(t) for t in tensors], axis=0)  # [N, K]
        return self.asm.node1(
            "MatMul", [x, self._float(f"{name}.weight_t", np.ascontiguousarray(dense.T))], name=name
        )

    def _norm_weight(self, tensor_name: str) -> str:
        return self._float(tensor_name, dequantize(self.src.tensor(tensor_name)))

    def _skip_norm(self, x: str, residual: str, weight: str, name: str) -> tuple[str, str]:
        """(RMSNorm(x + residual), x + residual) in one fused node."""
        outputs = self.asm.node(
            "SkipSimplifiedLayerNormalization",
            [x, residual, self._norm_weight(weight)],
            4,
            name=name,
            domain=MS,
            epsilon=float(self.spec.rms_eps),
        )
        node = self.asm.nodes[-1]
        node.output[1] = node.output[2] = ""  # mean and inverse std: training outputs we never read
        return outputs[0], outputs[3]

    # --- parts ----------------------------------------------------------------------------------
    def _embedding_blocks(self) -> AffineBlocks:
        tensor = self.src.tensor("token_embd.weight")
        if type_name(tensor) in ("F32", "F16", "BF16"):
            return quantize_rtn(dequantize(tensor), bits=8)
        return exact_blocks(tensor)

    def _embed_and_head(self, input_ids: str) -> tuple[str, Callable[[str], str]]:
        """Embedding lookup, and a function that applies the LM head (sharing weights when tied)."""
        if not self.quantized:
            table = dequantize(self.src.tensor("token_embd.weight"))  # [V, H]
            table_name = self._float("token_embd.weight", table)
            x = self.asm.node1("Gather", [table_name, input_ids], name="embed", axis=0)
            if self.spec.tied_embeddings:
                return x, lambda h: self._dense_head(h, table_name)
            return x, lambda h: self._linear(h, ["output.weight"], "lm_head")
        # Quantized: gather 8-bit codes + per-block scales (+ offsets) and dequantize only the gathered rows.
        blocks = self._embedding_blocks()
        linear = pack(blocks, bits=8, block_size=blocks.group)
        codes = self.asm.weight("token_embd.codes", linear.codes)  # [V, kb, bs]
        scales = self.asm.weight("token_embd.scales", linear.scales)  # [V, kb]
        rows = self.asm.node1("Gather", [codes, input_ids], name="embed/codes", axis=0)  # [B, S, kb, bs]
        values = self.asm.node1("Cast", [rows], name="embed/cast", to=self.onnx_dtype)
        centered = self.asm.node1(
            "Sub", [values, self.asm.constant(np.array(128, self.np_dtype))], name="embed/center"
        )
        axes = self.asm.constant(np.array([-1], dtype=np.int64))
        row_scales = self.asm.node1("Gather", [scales, input_ids], name="embed/scales", axis=0)
        x = self.asm.node1(
            "Mul",
            [centered, self.asm.node1("Unsqueeze", [row_scales, axes], name="embed/us")],
            name="embed/scale",
        )
        if linear.offsets is not None:
            offsets = self.asm.weight("token_embd.offsets", linear.offsets)
            row_offsets = self.asm.node1("Gather", [offsets, input_ids], name="embed/offsets", axis=0)
            x = self.asm.node1(
                "Add",
                [x, self.asm.node1("Unsqueeze", [row_offsets, axes], name="embed/uo")],
                name="embed/offset",
            )
        shape = self.asm.constant(np.array([0, 0, self.spec.hidden_size], dtype=np.int64))
        x = self.asm.node1("Reshape", [x, shape], name="embed/reshape")

        if not self.spec.tied_embeddings:
            return x, lambda h: self._linear(h, ["output.weight"], "lm_head")
        head_bits = 4 if self.opt.precision == "int4" and blocks.code_span <= 16 else 8
        if head_bits == 8:  # the LM head reads the very same codes and scales
            shared = linear

            def head(h: str) -> str:
                y = self.asm.node1(
                    "MatMulNBits",
                    [h, codes, scales],
                    name="lm_head",
                    domain=MS,
                    K=shared.k,
                    N=shared.n,
                    bits=8,
                    block_size=shared.block_size,
                    accuracy_level=INT4_ACCURACY_LEVEL,
                )
                if shared.offsets is None:
                    return y
                offsets_t = self.asm.weight("lm_head.offsets_t", np.ascontiguousarray(shared.offsets.T))
                bsum = self._blocksum(h, shared.k, shared.block_size)
                return self.asm.node1(
                    "Add",
                    [y, self.asm.node1("MatMul", [bsum, offsets_t], name="lm_head/offset")],
                    name="lm_head/add",
                )

            return x, head
        return x, lambda h: self._packed_linear(h, pack(blocks, 4, blocks.group), "lm_head")

    def _dense_head(self, h: str, table: str) -> str:
        """Tied dense LM head: Gemm with transB reads the embedding table as is (no transposed copy)."""
        axes = self.asm.constant(np.array([1], dtype=np.int64))
        flat = self.asm.node1("Squeeze", [h, axes], name="lm_head/squeeze")  # [B, H]
        y = self.asm.node1("Gemm", [flat, table], name="lm_head", transB=1)  # [B, V]
        return self.asm.node1("Unsqueeze", [y, axes], name="lm_head/unsqueeze")

    def _rotary_caches(self) -> tuple[str, str]:
        spec = self.spec
        inv_freq = spec.rope_theta ** (-np.arange(0, spec.head_dim, 2, dtype=np.float64) / spec.head_dim)
        factors = self.src.rope_freq_factors()
        if factors is not None:
            inv_freq = inv_freq / factors.astype(np.float64)
        positions = np.arange(self.opt.max_context, dtype=np.float64) / spec.rope_linear_factor
        angles = np.outer(positions, inv_freq)  # [max_context, head_dim / 2]
        return self._float("rotary.cos", np.cos(angles)), self._float("rotary.sin", np.sin(angles))

    # --- the whole graph ------------------------------------------------------------------------
    def build(self, on_layer: Callable[[int], None]) -> None:
        spec, io, asm = self.spec, self.opt.io, self.asm
        kv_shape: list[int | str] = ["batch", spec.n_kv_heads, "kv_capacity", spec.head_dim]
        input_ids = asm.add_input(io.input_ids, TensorProto.INT64, ["batch", "sequence"])
        seqlens_k = asm.add_input(io.seqlens_k, TensorProto.INT32, ["batch"])
        total_len = asm.add_input(io.total_sequence_length, TensorProto.INT32, [])
        past = [
            (
                asm.add_input(io.past_key.format(i=i), self.onnx_dtype, kv_shape),
                asm.add_input(io.past_value.format(i=i), self.onnx_dtype, kv_shape),
            )
            for i in range(spec.n_layers)
        ]
        x, lm_head = self._embed_and_head(input_ids)
        cos, sin = self._rotary_caches()
        eps = float(spec.rms_eps)
        residual = x
        hidden = asm.node1(
            "SimplifiedLayerNormalization",
            [x, self._norm_weight("blk.0.attn_norm.weight")],
            name="blk.0/attn_norm",
            axis=-1,
            epsilon=eps,
            stash_type=1,
        )
        presents: list[tuple[str, str]] = []
        for i in range(spec.n_layers):
            p = f"blk.{i}"
            if i > 0:
                hidden, residual = self._skip_norm(
                    hidden, residual, f"{p}.attn_norm.weight", f"{p}/attn_norm"
                )
            qkv = self._linear(
                hidden, [f"{p}.attn_q.weight", f"{p}.attn_k.weight", f"{p}.attn_v.weight"], f"{p}/qkv"
            )
            attn, present_k, present_v = asm.node(
                "GroupQueryAttention",
                [qkv, "", "", past[i][0], past[i][1], seqlens_k, total_len, cos, sin],
                3,
                name=f"{p}/attn",
                domain=MS,
                num_heads=spec.n_heads,
                kv_num_heads=spec.n_kv_heads,
                do_rotary=1,
                rotary_interleaved=1,  # GGUF keeps Q/K rows in ggml's adjacent-pair RoPE order
            )
            presents.append((present_k, present_v))
            attn_out = self._linear(attn, [f"{p}.attn_output.weight"], f"{p}/o_proj")
            normed, residual = self._skip_norm(attn_out, residual, f"{p}.ffn_norm.weight", f"{p}/ffn_norm")
            gate_up = self._linear(normed, [f"{p}.ffn_gate.weight", f"{p}.ffn_up.weight"], f"{p}/gate_up")
            gate, up = asm.node(
                "Split",
                [gate_up, asm.constant(np.array([spec.ffn_size] * 2, np.int64))],
                2,
                name=f"{p}/split",
                axis=-1,
            )
            silu = asm.node1(
                "Mul", [gate, asm.node1("Sigmoid", [gate], name=f"{p}/sigmoid")], name=f"{p}/silu"
            )
            hidden = self._linear(
                asm.node1("Mul", [silu, up], name=f"{p}/swiglu"), [f"{p}.ffn_down.weight"], f"{p}/down"
            )
            on_layer(i)
        # Only the last position's logits are needed: slice before the final norm and the LM head.
        starts, ends, axis = (asm.constant(np.array([v], np.int64)) for v in (-1, np.iinfo(np.int64).max, 1))
        last_h = asm.node1("Slice", [hidden, starts, ends, axis], name="last/hidden")
        last_r = asm.node1("Slice", [residual, starts, ends, axis], name="last/residual")
        final, _ = self._skip_norm(last_h, last_r, "output_norm.weight", "output_norm")
        logits = lm_head(final)
        if self.half:
            logits = asm.node1("Cast", [logits], name="logits/cast", to=TensorProto.FLOAT)
        asm.add_output(io.logits, logits, TensorProto.FLOAT, ["batch", 1, spec.vocab_size])
        for i, (present_k, present_v) in enumerate(presents):
            asm.add_output(io.present_key.format(i=i), present_k, self.onnx_dtype, kv_shape)
            asm.add_output(io.present_value.format(i=i), present_v, self.onnx_dtype, kv_shape)
