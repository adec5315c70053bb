"""KV cache slots: one buffer per layer and kind, [max_batch, kv_heads, capacity, head_dim], allocated once.

A running sequence owns a slot (a row of every buffer). Because a slot's rows are contiguous, slots
0..n-1 form a valid [n, kv_heads, capacity, head_dim] tensor: decode binds that range directly, and
prefill binds a single slot as a batch of one. Nothing is copied per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class KVShape:
    n_layers: int
    n_kv_heads: int
    head_dim: int
    max_batch: int
    capacity: int  # tokens per slot
    dtype: type[np.floating]  # np.float32 or np.float16

    @property
    def slot_elements(self) -> int:
        return self.n_kv_heads * self.capacity * self.head_dim

    @property
    def slot_bytes(self) -> int:
        return self.slot_elements * np.dtype(self.dtype).itemsize

    @property
    def total_bytes(self) -> int:
        return 2 * self.n_layers * self.max_batch * self.slot_bytes

    def batch_shape(self, n: int) -> list[int]:
        return [n, self.n_kv_heads, self.capacity, self.head_dim]

    def __str__(self) -> str:
        gib = self.total_bytes / 2**30
        return f"{self.max_batch} slots x {self.capacity} tokens, {np.dtype(self.dtype).name}, {gib:.2f} GiB"


class KVCache:
    """Host (numpy) KV buffers for the CPU execution provider."""

    device: Device = "cpu"

    def __init__(self, shape: KVShape) -> None:
        self.shape = shape
        full = (shape.max_batch, shape.n_kv_heads, shape.capacity, shape.head_dim)
        # keys[i], values[i]: layer i. np.zeros commits pages lazily, so unused capacity costs no RAM.
        self.keys = [np.zeros(full, dtype=shape.dtype) for _ in range(shape.n_layers)]
        self.values = [np.zeros(full, dtype=shape.dtype) for _ in range(shape.n_layers)]

    def pointer(self, layer: int, kind: Literal["key", "value"], slot: int) -> int:
        """Address of `slot`'s rows in one buffer (the start of a batch that begins at this slot)."""
        buffer = self.keys[layer] if kind == "key" else self.values[layer]
        return int(buffer.ctypes.data) + slot * self.shape.slot_bytes

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cached positions of slot `src` into slot `dst` (compaction, n > 1)."""
        if src == dst or length <= 0:
            return
        for buffer in (*self.keys, *self.values):
            buffer[dst, :, :length] = buffer[src, :, :length]

    def swap_slots(self, a: int, b: int, length_a: int, length_b: int) -> None:
        """Exchange the cached positions of two slots (a's first length_a rows go to b and vice versa)."""
        for buffer in (*self.keys, *self.values):
            saved = buffer[a, :, :length_a].copy()
            if length_b:
                buffer[a, :, :length_b] = buffer[b, :, :length_b]
            if length_a:
                buffer[b, :, :length_a] = saved
