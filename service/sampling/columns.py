"""The sampler's inputs and outputs: per-row parameter columns, sparse per-row token data, results.

Columns are [B, 1] arrays in the style of TGI's utils/tokens.py: one vectorised pass serves a batch whose
rows have different parameters; a row that does not use a stage holds its neutral value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]
IndexArray = NDArray[np.int64]
NO_LOGPROBS = -1  # top_logprobs column value of a row that asked for no logprobs


@dataclass(frozen=True)
class TokenEdits:
    """Steps 1-3 of the sampler as one entry per (row, token) that has a logit_bias, a penalty or a
    suppression: the token's logit x becomes v = x + bias, then v / divisor if v > 0 else v · divisor,
    then v - subtract. divisor is the row's repetition_penalty for a token in its history (prompt and
    generated tokens), else 1; subtract is frequency_penalty · count + presence_penalty · (count > 0),
    count the times the token was generated; a suppressed token's bias is -inf (so v is -inf for any
    finite x). Rows ascend, and a (row, token) pair appears at most once: the sampling head applies the
    entries as they are (service/engine/kernels/parley_ops.c)."""

    rows: IndexArray
    tokens: IndexArray
    factors: FloatArray  # (E, 3): bias, divisor, subtract

    @staticmethod
    def empty() -> TokenEdits:
        return TokenEdits(np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, 3), np.float32))

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def bias(self) -> FloatArray:
        return self.factors[:, 0]

    @property
    def divisor(self) -> FloatArray:
        return self.factors[:, 1]

    @property
    def subtract(self) -> FloatArray:
        return self.factors[:, 2]

    def row(self, row: int) -> slice:
        """The span of row `row`'s entries."""
        return slice(int(self.rows.searchsorted(row, "left")), int(self.rows.searchsorted(row, "right")))


@dataclass(frozen=True)
class HeadInputs:
    """What the decode graph's sampling head needs besides the logits (service/sampling/top.py):
    the rows' softmax scales (RowParameters.head_scales) and their edits, applied before it looks."""

    scales: FloatArray  # (B, 2)
    edits: TokenEdits


@dataclass(frozen=True)
class RowParameters:
    """The dense per-row parameters of a batch: (B, 1) columns that stay the same while its sequences do
    (build_columns keeps them across steps, with what is derived from them). Float columns are float32
    except top_p (float64, compared with float64 running sums)."""

    temperature: FloatArray  # (B, 1); 0 = greedy
    top_k: IndexArray  # (B, 1); 0 = no limit
    top_p: NDArray[np.float64]  # (B, 1); 1 = off
    min_p: FloatArray  # (B, 1); 0 = off
    top_logprobs: IndexArray  # (B, 1); NO_LOGPROBS, or how many alternatives to report (0..20)

    @cached_property
    def inverse_temperature(self) -> FloatArray:
        """(B,) float32 1/T, 0 for greedy rows: the scale the sampling head and the sampler both apply."""
        temperature = self.temperature[:, 0]
        inverse = np.zeros(temperature.size, np.float32)
        np.divide(np.float32(1.0), temperature, out=inverse, where=temperature > 0.0)
        return inverse

    @cached_property
    def any_sampled(self) -> bool:
        """Whether any row samples (temperature > 0)."""
        return bool(self.temperature.any())

    @cached_property
    def any_logprobs(self) -> bool:
        return bool((self.top_logprobs != NO_LOGPROBS).any())

    @cached_property
    def mass_mask(self) -> NDArray[np.float64]:
        """(B,) 1 where the head computes the row's mass at 1/T (head_scales column 0), else NaN: the
        head's mass column times this is each row's mass, or NaN where it has none."""
        return np.where(self.head_scales[:, 0] > 0.0, 1.0, np.nan)

    @cached_property
    def draw_scales(self) -> NDArray[np.float64]:
        """(B,) float64 1/T, and 1 for greedy rows: the candidates' weights are e^((x - max) · scale)
        (a greedy row's are never drawn from; 1 keeps its -inf pads at weight 0 rather than NaN)."""
        sampled = self.temperature[:, 0] > 0.0
        scales: NDArray[np.float64] = np.where(sampled, self.inverse_temperature, np.float32(1.0)).astype(
            np.float64
        )
        return scales

    @cached_property
    def head_scales(self) -> FloatArray:
        """(B, 2) float32: the scales at which the sampling head (top.py) computes each row's softmax
        normalisers, 0 where none is wanted. Column 0 is 1/T for the sampled rows that need their whole
        row's mass (untruncated, or top_p without top_k); column 1 is 1 for a row that reports logprobs."""
        scales = np.zeros((self.temperature.shape[0], 2), np.float32)
        whole_mass = (self.top_k[:, 0] == 0) & ((self.top_p[:, 0] < 1.0) | (self.min_p[:, 0] <= 0.0))
        scales[whole_mass, 0] = self.inverse_temperature[whole_mass]
        scales[self.top_logprobs[:, 0] != NO_LOGPROBS, 1] = 1.0
        return scales

    def select(self, index: IndexArray) -> RowParameters:
        return RowParameters(
            self.temperature[index],
            self.top_k[index],
            self.top_p[index],
            self.min_p[index],
            self.top_logprobs[index],
        )


@dataclass(frozen=True)
class SamplingColumns:
    """One decode step's inputs for B rows: the rows' parameters, their draws and sparse token data."""

    parameters: RowParameters
    uniform: NDArray[np.float64]  # (B, 1); the row's draw in [0, 1), unused by greedy rows
    edits: TokenEdits  # logit_bias, the penalties and suppression

    # the parameters' columns and what derives from them, read through
    @property
    def temperature(self) -> FloatArray:
        return self.parameters.temperature

    @property
    def top_k(self) -> IndexArray:
        return self.parameters.top_k

    @property
    def top_p(self) -> NDArray[np.float64]:
        return self.parameters.top_p

    @property
    def min_p(self) -> FloatArray:
        return self.parameters.min_p

    @property
    def top_logprobs(self) -> IndexArray:
        return self.parameters.top_logprobs

    @property
    def head_scales(self) -> FloatArray:
        return self.parameters.head_scales

    @property
    def draw_scales(self) -> NDArray[np.float64]:
        return self.parameters.draw_scales

    @cached_property
    def head(self) -> HeadInputs:
        """The sampling head's inputs for these rows (one object per step: the sampler checks that the
        head it is given was computed for it)."""
        return HeadInputs(self.parameters.head_scales, self.edits)

    @property
    def batch_size(self) -> int:
        return int(self.uniform.shape[0])

    def select(self, rows: Sequence[int]) -> SamplingColumns:
        """The columns of `rows` alone, renumbered 0..len(rows)-1, with the same draws (a retry after
        a failed row must not draw again, or seeded requests would lose their sequence)."""
        index = np.asarray(rows, np.int64)
        renumber = np.full(self.batch_size, -1, np.int64)
        renumber[index] = np.arange(index.size)
        kept = renumber.take(self.edits.rows) >= 0
        edits = self.edits
        return SamplingColumns(
            parameters=self.parameters.select(index),
            uniform=self.uniform[index],
            edits=TokenEdits(renumber.take(edits.rows[kept]), edits.tokens[kept], edits.factors[kept]),
        )


@dataclass(frozen=True)
class TokenLogprobs:
    """The chosen token's log probability and the most likely alternatives (descending, ties by id)."""

    logprob: float
    top_ids: tuple[int, ...]
    top_logprobs: tuple[float, ...]


@dataclass(frozen=True)
class SampledTokens:
    tokens: IndexArray  # (B,)
    logprobs: tuple[TokenLogprobs | None, ...]  # per row; None where the row asked for none
