"""Steps 1-3 of the sampler for one row: logit_bias, penalties and suppression, as sparse edits.

With the sampling head the graph applies the edits itself (parley_ops.c, the same arithmetic) and the
sampler reads an edited row only when the head's candidates cannot decide it; without the head every
edited row is read. Either way the row is materialised in a reused (V,) buffer (an L2-resident copy of
the row about to be read anyway), never as a fresh (B, V) copy: copying the batch costs ~15 µs per row
here, as much as everything else a greedy row does.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from service.sampling.columns import FloatArray, TokenEdits


class EditedRows:
    """row -> that row's logits after steps 1-3: a view of the input for an unedited row; an edited row
    lives in a shared buffer that the next lookup overwrites."""

    def __init__(self, logits: FloatArray, edits: TokenEdits) -> None:
        self.logits, self.edits = logits, edits
        self._buffer: FloatArray | None = None

    @cached_property  # only fallbacks and logprobs ask: most steps with the sampling head never do
    def edited_rows(self) -> NDArray[np.bool_]:
        edited: NDArray[np.bool_] = np.bincount(self.edits.rows, minlength=self.logits.shape[0]) > 0
        return edited

    def __getitem__(self, row: int) -> FloatArray:
        raw: FloatArray = self.logits[row]
        if not self.edited_rows[row]:
            return raw
        if self._buffer is None:
            self._buffer = np.empty(raw.size, np.float32)
        span = self.edits.row(row)
        tokens = self.edits.tokens[span]
        np.copyto(self._buffer, raw)
        self._buffer[tokens] = edited_values(raw.take(tokens), self.edits.factors[span])
        return self._buffer


def edited_values(raw: FloatArray, factors: FloatArray) -> FloatArray:
    """Steps 1-3 for entries with logits `raw` and (bias, divisor, subtract) `factors` (columns.TokenEdits),
    in float32 as the sampling head computes them: bias, then repetition, then frequency and presence."""
    biased = raw + factors[:, 0]
    penalised: FloatArray = np.where(biased > 0.0, biased / factors[:, 1], biased * factors[:, 1])
    penalised -= factors[:, 2]
    return penalised
