"""Slot bookkeeping for the KV cache: which row of the cache buffers holds what.

Invariant: the sequences being decoded occupy rows 0..d-1, so one decode step binds that range as a
batch (DESIGN.md §5, "Slots verified"). Every other row is empty, parked (holds the K/V of a finished
sequence's tokens, kept for prefix reuse) or prefilling (a sequence being prefilled, which may sit in
any row ≥ d). Rows move only when a sequence joins or leaves the decode range: a swap of two rows,
copying just their cached positions. Measured choice: a swap costs about as much as one decode step
spends on a single idle row, and holes would cost that on every step they live (see bench).

Pure bookkeeping: the table returns the swaps to perform; the caller applies them to the buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Occupant(Protocol):
    """A sequence that owns a row. `cached_tokens` are the ids whose K/V the row holds, in order."""

    slot: int

    @property
    def cached_tokens(self) -> Sequence[int]: ...


@dataclass
class Parked:
    tokens: tuple[int, ...]
    last_used: float


@dataclass(frozen=True)
class Swap:
    a: int
    b: int
    length_a: int  # cached positions of row a to move to b
    length_b: int  # and of row b to move to a


@dataclass
class Placement:
    slot: int
    reused: int  # leading prompt tokens already cached in that row
    swaps: list[Swap] = field(default_factory=list)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(diff[0]) if diff.size else n


class SlotTable:
    def __init__(self, n_slots: int) -> None:
        self.n_slots = n_slots
        self.rows: list[Occupant | Parked | None] = [None] * n_slots
        self.decoding = 0  # rows 0..decoding-1 are being decoded

    # --- queries ---------------------------------------------------------------------------------
    def free_rows(self) -> list[int]:
        """Rows a new sequence may take: empty or parked ones."""
        return [i for i, row in enumerate(self.rows) if row is None or isinstance(row, Parked)]

    def occupants(self) -> list[Occupant]:
        return [row for row in self.rows if row is not None and not isinstance(row, Parked)]

    def parked_tokens(self) -> int:
        return sum(len(row.tokens) for row in self.rows if isinstance(row, Parked))

    # --- transitions -----------------------------------------------------------------------------
    def place(self, seq: Occupant, prompt: Sequence[int], now: float) -> Placement | None:
        """Give `seq` a row for its prefill: the parked row sharing the longest prefix with `prompt`
        (those tokens need no prefill), else an empty row, else the least recently used parked row.
        None when every row is taken."""
        free = self.free_rows()
        if not free:
            return None
        best, best_len = -1, 0
        for i in free:
            row = self.rows[i]
            if isinstance(row, Parked):
                # At least the last prompt token is always run: its logits start generation.
                shared = min(common_prefix(row.tokens, prompt), len(prompt) - 1)
                if shared > best_len:
                    best, best_len = i, shared
        if best < 0:
            empty = [i for i in free if self.rows[i] is None]
            best = empty[0] if empty else min(free, key=lambda i: self._last_used(i))
        self.rows[best] = seq
        seq.slot = best
        return Placement(slot=best, reused=best_len)

    def _last_used(self, i: int) -> float:
        row = self.rows[i]
        return row.last_used if isinstance(row, Parked) else float("-inf")

    def start_decoding(self, seq: Occupant) -> list[Swap]:
        """Move a prefilled sequence into the decode range (row `decoding`)."""
        target = self.decoding
        swaps = self._swap(seq.slot, target) if seq.slot != target else []
        self.decoding += 1
        return swaps

    def finish(self, seq: Occupant, now: float, *, park: bool = True) -> list[Swap]:
        """Release `seq`'s row. A decoding sequence's row is swapped to the end of the decode range
        first (keeping it contiguous); the row is then parked with its tokens (or emptied)."""
        swaps: list[Swap] = []
        if seq.slot < self.decoding:
            last = self.decoding - 1
            if seq.slot != last:
                swaps = self._swap(seq.slot, last)
            self.decoding -= 1
        tokens = tuple(seq.cached_tokens)
        self.rows[seq.slot] = Parked(tokens, now) if park and tokens else None
        return swaps

    def _swap(self, a: int, b: int) -> list[Swap]:
        row_a, row_b = self.rows[a], self.rows[b]
        swap = Swap(a, b, self._length(row_a), self._length(row_b))
        self.rows[a], self.rows[b] = row_b, row_a
        for row, slot in ((row_a, b), (row_b, a)):
            if row is not None and not isinstance(row, Parked):
                row.slot = slot
        return [swap] if swap.length_a or swap.length_b else []

    @staticmethod
    def _length(row: Occupant | Parked | None) -> int:
        if row is None:
            return 0
        if isinstance(row, Parked):
            return len(row.tokens)
        return len(row.cached_tokens)

    def evict_idle(self, older_than: float) -> int:
        """Forget parked rows unused since `older_than` (monotonic seconds); returns how many."""
        evicted = 0
        for i, row in enumerate(self.rows):
            if isinstance(row, Parked) and row.last_used < older_than:
                self.rows[i] = None
                evicted += 1
        return evicted

    def touch(self, slot: int, now: float) -> None:
        row = self.rows[slot]
        if isinstance(row, Parked):
            row.last_used = now

    def fork(self, child: Occupant) -> int | None:
        """A row for a sibling choice that will copy its parent's prompt rows: an empty row, else the
        least recently used parked one. None when every row is taken."""
        free = self.free_rows()
        if not free:
            return None
        empty = [i for i in free if self.rows[i] is None]
        row = empty[0] if empty else min(free, key=lambda i: self._last_used(i))
        self.rows[row] = child
        child.slot = row
        return row
