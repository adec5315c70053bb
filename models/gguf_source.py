"""Read a llama-family GGUF: its hyperparameters (validated) and its tensors, with clear errors for
anything we cannot convert. Only metadata parsing and tensor lookup live here; weight conversion is in
models/weights.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from service.errors import ModelError

SUPPORTED_ARCHITECTURES = ("llama",)

# Tensor types we convert. Quantized ones map exactly onto MatMulNBits blocks (models/weights.py).
SUPPORTED_TENSOR_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)


@dataclass(frozen=True)
class LlamaSpec:
    """Hyperparameters of a llama-architecture model, as the GGUF states them."""

    name: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    train_context: int
    rope_theta: float
    rope_linear_factor: float  # positions are divided by this (1.0 = no scaling)
    rms_eps: float
    tied_embeddings: bool


class GGUFSource:
    """An opened GGUF file. Raises ModelError (one line, naming the file) for anything unusable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise ModelError(f"{path}: no such file")
        try:
            self.reader = gguf.GGUFReader(path)
        except (ValueError, OSError, IndexError, KeyError, EOFError) as exc:
            raise ModelError(f"{path}: not a readable GGUF file (corrupt or truncated?): {exc}") from None
        self._tensors = {t.name: t for t in self.reader.tensors}
        self._check_extent()
        self.architecture = self.string("general.architecture")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ModelError(
                f"{path}: architecture {self.architecture!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        for tensor in self.reader.tensors:
            type_name = tensor.tensor_type.name
            if type_name not in SUPPORTED_TENSOR_TYPES:
                raise ModelError(
                    f"{path}: tensor {tensor.name} has type {type_name}, which is not supported "
                    f"(supported: {', '.join(SUPPORTED_TENSOR_TYPES)})"
                )
        self.spec = self._read_spec()

    def _check_extent(self) -> None:
        size = self.path.stat().st_size
        for tensor in self.reader.tensors:
            if tensor.data_offset + tensor.n_bytes > size:
                raise ModelError(
                    f"{self.path}: truncated: tensor {tensor.name} extends past the end of the file"
                )

    # --- metadata -------------------------------------------------------------------------------
    def value(self, key: str) -> Any:
        field = self.reader.fields.get(key)
        return None if field is None else field.contents()

    def string(self, key: str) -> str:
        value = self.value(key)
        if not isinstance(value, str):
            raise ModelError(f"{self.path}: metadata {key} is missing or not a string")
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        value = self.value(key)
        if value is None and default is not None:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            raise ModelError(f"{self.path}: metadata {key} is missing or not an integer (got {value!r})")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.value(key)
        if value is None:
            return default
        if not isinstance(value, int | float):
            raise ModelError(f"{self.path}: metadata {key} is not a number (got {value!r})")
        return float(value)

    def _read_spec(self) -> LlamaSpec:
        arch = self.architecture
        hidden = self.integer(f"{arch}.embedding_length")
        n_heads = self.integer(f"{arch}.attention.head_count")
        n_kv_heads = self.integer(f"{arch}.attention.head_count_kv", default=n_heads)
        head_dim = self.integer(f"{arch}.attention.key_length", default=hidden // n_heads)
        rope_dims = self.integer(f"{arch}.rope.dimension_count", default=head_dim)
        if rope_dims != head_dim:
            raise ModelError(f"{self.path}: partial rotary ({rope_dims} of {head_dim} dims) is not supported")
        if n_heads % n_kv_heads:
            raise ModelError(f"{self.path}: {n_heads} heads is not a multiple of {n_kv_heads} KV heads")
        scaling = self.value(f"{arch}.rope.scaling.type")
        factor = 1.0
        if scaling == "linear":
            factor = self.number(f"{arch}.rope.scaling.factor", 1.0)
        elif scaling not in (None, "none"):
            raise ModelError(
                f"{self.path}: rope scaling {scaling!r} is not supported (supported: none, linear)"
            )
        embed = self.tensor("token_embd.weight")
        vocab = int(embed.shape[-1])
        tokens = self.value("tokenizer.ggml.tokens")
        if isinstance(tokens, list) and len(tokens) != vocab:
            raise ModelError(
                f"{self.path}: {len(tokens)} tokens in the vocabulary but embeddings for {vocab}"
            )
        return LlamaSpec(
            name=str(self.value("general.name") or self.path.stem),
            n_layers=self.integer(f"{arch}.block_count"),
            hidden_size=hidden,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            ffn_size=self.integer(f"{arch}.feed_forward_length"),
            vocab_size=vocab,
            train_context=self.integer(f"{arch}.context_length"),
            rope_theta=self.number(f"{arch}.rope.freq_base", 10000.0),
            rope_linear_factor=factor,
            rms_eps=self.number(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
            tied_embeddings="output.weight" not in self._tensors,
        )

    # --- tensors --------------------------------------------------------------------------------
    def has_tensor(self, name: str) -> bool:
        return name in self._tensors

    def tensor(self, name: str) -> gguf.ReaderTensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise ModelError(f"{self.path}: tensor {name} is missing") from None

    def rope_freq_factors(self) -> np.ndarray | None:
        """Llama 3.1-style per-frequency RoPE divisors, if the GGUF carries them."""
        if not self.has_tensor("rope_freqs.weight"):
            return None
        return np.asarray(self.tensor("rope_freqs.weight").data, dtype=np.float32).reshape(-1)
