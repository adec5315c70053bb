"""The slot table keeps decoding sequences in rows 0..d-1 and every row's K/V where its owner expects it.

A model of the cache: each row of a real KVCache (one layer, head_dim 1) stores token ids at positions,
so after any sequence of joins, leaves and swaps we can read back what each row holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine.kv_cache import KVCache, KVShape
from service.engine.slots import Parked, SlotTable, Swap, common_prefix

SLOTS, CAPACITY = 4, 32


@dataclass(eq=False)
class Seq:
    tokens: list[int]
    slot: int = -1
    n_cached: int = 0
    decoding: bool = False
    history: list[int] = field(default_factory=list)

    @property
    def cached_tokens(self) -> Sequence[int]:
        return self.tokens[: self.n_cached]


class Model:
    def __init__(self) -> None:
        self.table = SlotTable(SLOTS)
        self.kv = KVCache(KVShape(1, 1, 1, SLOTS, CAPACITY, np.float32))
        self.clock = 0.0

    def apply(self, swaps: list[Swap]) -> None:
        for s in swaps:
            self.kv.swap_slots(s.a, s.b, s.length_a, s.length_b)

    def write(self, seq: Seq, upto: int) -> None:
        """The model writing K/V for positions [n_cached, upto) of seq's row."""
        self.kv.keys[0][seq.slot, 0, seq.n_cached : upto, 0] = seq.tokens[seq.n_cached : upto]
        seq.n_cached = upto

    def row_tokens(self, row: int, length: int) -> list[int]:
        return [int(v) for v in self.kv.keys[0][row, 0, :length, 0]]

    def check(self) -> None:
        table = self.table
        for i, row in enumerate(table.rows):
            if isinstance(row, Parked):
                assert self.row_tokens(i, len(row.tokens)) == list(row.tokens)
            elif row is not None:
                assert isinstance(row, Seq)
                assert row.slot == i
                assert self.row_tokens(i, row.n_cached) == list(row.cached_tokens)
                assert (i < table.decoding) == row.decoding


prompts = st.lists(st.integers(1, 6), min_size=2, max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["join", "step", "leave"]), prompts, st.integers(0, 7)), max_size=40)
)
def test_rows_hold_what_their_owners_expect(ops: list[tuple[str, list[int], int]]) -> None:
    model = Model()
    live: list[Seq] = []
    for op, prompt, pick in ops:
        model.clock += 1
        if op == "join":
            seq = Seq(list(prompt))
            placement = model.table.place(seq, seq.tokens, model.clock)
            if placement is None:
                assert not model.table.free_rows()
                continue
            assert common_prefix(model.row_tokens(seq.slot, placement.reused), seq.tokens) == placement.reused
            seq.n_cached = placement.reused
            model.write(seq, len(seq.tokens) - 1)  # prefill all but the last token
            model.apply(model.table.start_decoding(seq))
            seq.decoding = True
            live.append(seq)
        elif op == "step" and live:
            for seq in live:  # a decode step: each row gains one token
                if len(seq.tokens) < CAPACITY:
                    seq.tokens.append(pick)
                    model.write(seq, len(seq.tokens) - 1)
        elif op == "leave" and live:
            seq = live.pop(pick % len(live))
            model.apply(model.table.finish(seq, model.clock))
        model.check()
        assert model.table.decoding == len(live)


def test_the_longest_shared_prefix_wins() -> None:
    table = SlotTable(3)
    table.rows[1] = Parked((1, 2, 3, 4), 0.0)
    table.rows[2] = Parked((1, 2, 9), 5.0)
    seq = Seq([1, 2, 3, 4, 5])
    placement = table.place(seq, seq.tokens, 10.0)
    assert placement is not None and (placement.slot, placement.reused) == (1, 4)
    same = Seq([1, 2, 3, 4])  # a prompt entirely cached still runs its last token
    placement = table.place(same, same.tokens, 11.0)
    assert placement is not None and placement.slot == 2 and placement.reused == 2


def test_eviction_takes_the_least_recently_used_row() -> None:
    table = SlotTable(2)
    table.rows[0] = Parked((7, 7), 3.0)
    table.rows[1] = Parked((8, 8), 1.0)
    placement = table.place(Seq([1, 2, 3]), [1, 2, 3], 4.0)
    assert placement is not None and (placement.slot, placement.reused) == (1, 0)
    assert table.place(Seq([1]), [1], 5.0) is not None
    assert table.place(Seq([1]), [1], 6.0) is None
    assert table.evict_idle(older_than=10.0) == 0  # nothing parked any more
