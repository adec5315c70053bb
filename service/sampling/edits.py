"""Steps 1-3 of the sampler: logit_bias, penalties and suppression, as sparse edits of a few rows.

The new values are computed for all (row, token) pairs of the batch at once, from the raw logits; a row
with edits is then materialised one at a time in a reused (V,) buffer (an L2-resident copy of the row
it is about to read anyway), never as a fresh (B, V) copy: copying the batch costs ~15 µs per row here,
as much as everything else a greedy row does.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from service.sampling.columns import FloatArray, IndexArray, SamplingColumns, TokenEdits


class EditedRows:
    """row -> that row's logits after steps 1-3. An edited row lives in a shared buffer that the next
    lookup overwrites; an unedited row is a view of the input. The same edits, sparsely: `rows` (ascending),
    `tokens`, `raw` and `values`, the logits before and after, one entry per edited (row, token)."""

    def __init__(self, logits: FloatArray, columns: SamplingColumns) -> None:
        self.logits = logits
        edits, suppressed = columns.edits, columns.suppressed
        self.any = bool(len(edits) or len(suppressed))
        if not self.any:
            self.rows, self.tokens, self.values = edits.rows, edits.tokens, edits.bias
            self.raw = edits.bias
            self.edited_rows: NDArray[np.bool_] = np.zeros(logits.shape[0], np.bool_)
            return
        batch, vocab = logits.shape
        self._buffer = np.empty(vocab, np.float32)
        raw = _gather(logits, edits.rows, edits.tokens)
        values = _edited(raw, edits)
        rows, tokens = edits.rows, edits.tokens
        if len(suppressed):  # -inf wins over a bias or penalty of the same (row, token): it comes first
            rows = np.concatenate([suppressed.rows, rows])
            tokens = np.concatenate([suppressed.tokens, tokens])
            values = np.concatenate([np.full(len(suppressed), -np.inf, np.float32), values])
            _, first = np.unique(rows * vocab + tokens, return_index=True)
            rows, tokens, values = rows[first], tokens[first], values[first]
            raw = _gather(logits, rows, tokens)
        elif rows.size > 1 and (rows[1:] < rows[:-1]).any():  # build_columns emits them in row order
            order = rows.argsort(kind="stable")
            rows, tokens, values, raw = rows[order], tokens[order], values[order], raw[order]
        self.rows, self.tokens, self.values, self.raw = rows, tokens, values, raw
        counts = np.bincount(rows, minlength=batch)
        self.edited_rows = counts > 0
        self._ends: list[int] = counts.cumsum().tolist()

    def _span(self, row: int) -> slice:
        return slice(self._ends[row - 1] if row else 0, self._ends[row])

    def __getitem__(self, row: int) -> FloatArray:
        if not self.edited_rows[row]:
            view: FloatArray = self.logits[row]
            return view
        span = self._span(row)
        np.copyto(self._buffer, self.logits[row])
        self._buffer[self.tokens[span]] = self.values[span]
        return self._buffer


def _gather(logits: FloatArray, rows: IndexArray, tokens: IndexArray) -> FloatArray:
    if logits.flags.c_contiguous:  # a flat take is ~3× faster than 2-D fancy indexing
        values: FloatArray = logits.reshape(-1).take(rows * logits.shape[1] + tokens)
        return values
    gathered: FloatArray = logits[rows, tokens]
    return gathered


def _edited(raw: FloatArray, edits: TokenEdits) -> FloatArray:
    """Steps 1-2 for each entry (columns.TokenEdits): bias, then repetition, frequency and presence."""
    biased = raw + edits.bias
    penalised: FloatArray = np.where(biased > 0.0, biased / edits.divisor, biased * edits.divisor)
    penalised -= edits.subtract
    return penalised
