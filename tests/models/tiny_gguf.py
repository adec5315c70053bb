"""Tiny synthetic llama GGUFs with random weights, one per tensor type, for fast converter tests.

Dimensions are multiples of 256 so every block format (including the K-quants' 256-wide super-blocks)
applies. Types that `gguf.quants` can quantize are written from random floats; Q4_K, Q5_K and Q6_K have
no quantizer there, so their blocks are random bytes with small, finite scale fields (every code pattern
is a valid block).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CONTROL, NORMAL = 3, 1
QUANTIZABLE = ("F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
RANDOM_BLOCKS = ("Q4_K", "Q5_K", "Q6_K")
ALL_TYPES = ("F32", *QUANTIZABLE, *RANDOM_BLOCKS)


@dataclass(frozen=True)
class TinySpec:
    n_layers: int = 2
    hidden: int = 256
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn: int = 512
    context: int = 128
    tied: bool = True


def _byte_tokens() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def _f16_bytes(value: float) -> np.ndarray:
    return np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)


def _random_blocks(
    rng: np.random.Generator, qtype: gguf.GGMLQuantizationType, rows: int, cols: int
) -> np.ndarray:
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows * cols // block_elems, block_bytes), dtype=np.uint8)
    if qtype.name == "Q6_K":
        raw[:, 192:208] = rng.integers(-20, 21, size=(raw.shape[0], 16)).astype(np.int8).view(np.uint8)
        raw[:, 208:210] = _f16_bytes(0.0005)
    else:  # Q4_K, Q5_K: d and dmin in the first four bytes
        raw[:, 0:2] = _f16_bytes(0.0003)
        raw[:, 2:4] = _f16_bytes(0.0005)
        raw[:, 4:16] &= 0x0F  # 6-bit scales and mins below 16 keep activations within fp16 range
    return raw.reshape(rows, -1)


def _add_weight(
    writer: gguf.GGUFWriter, rng: np.random.Generator, name: str, rows: int, cols: int, type_name: str
) -> None:
    qtype = gguf.GGMLQuantizationType[type_name]
    if type_name in RANDOM_BLOCKS:
        writer.add_tensor(name, _random_blocks(rng, qtype, rows, cols), raw_dtype=qtype)
        return
    values = (rng.standard_normal((rows, cols)) * 0.08).astype(np.float32)
    if type_name == "F32":
        writer.add_tensor(name, values)
    else:
        writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)


def write_tiny_llama(
    path: Path, tensor_type: str, spec: TinySpec = TinySpec(), *, seed: int = 0, arch: str = "llama"
) -> Path:
    rng = np.random.default_rng(seed)
    tokens = [*SPECIALS, *_byte_tokens(), "Ġt", "he"]  # two merges: the tokenizer needs some
    vocab = len(tokens)
    head_dim = spec.hidden // spec.n_heads
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(f"tiny-{tensor_type.lower()}")
    writer.add_context_length(spec.context)
    writer.add_embedding_length(spec.hidden)
    writer.add_block_count(spec.n_layers)
    writer.add_feed_forward_length(spec.ffn)
    writer.add_head_count(spec.n_heads)
    writer.add_head_count_kv(spec.n_kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([CONTROL] * len(SPECIALS) + [NORMAL] * (len(tokens) - len(SPECIALS)))
    writer.add_token_merges(["Ġ t", "h e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )

    def norm(name: str, size: int) -> None:
        writer.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(size)).astype(np.float32))

    _add_weight(writer, rng, "token_embd.weight", vocab, spec.hidden, tensor_type)
    for i in range(spec.n_layers):
        p = f"blk.{i}"
        norm(f"{p}.attn_norm.weight", spec.hidden)
        _add_weight(writer, rng, f"{p}.attn_q.weight", spec.hidden, spec.hidden, tensor_type)
        _add_weight(writer, rng, f"{p}.attn_k.weight", spec.n_kv_heads * head_dim, spec.hidden, tensor_type)
        _add_weight(writer, rng, f"{p}.attn_v.weight", spec.n_kv_heads * head_dim, spec.hidden, tensor_type)
        _add_weight(writer, rng, f"{p}.attn_output.weight", spec.hidden, spec.hidden, tensor_type)
        norm(f"{p}.ffn_norm.weight", spec.hidden)
        _add_weight(writer, rng, f"{p}.ffn_gate.weight", spec.ffn, spec.hidden, tensor_type)
        _add_weight(writer, rng, f"{p}.ffn_up.weight", spec.ffn, spec.hidden, tensor_type)
        _add_weight(writer, rng, f"{p}.ffn_down.weight", spec.hidden, spec.ffn, tensor_type)
    norm("output_norm.weight", spec.hidden)
    if not spec.tied:
        _add_weight(writer, rng, "output.weight", vocab, spec.hidden, tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
