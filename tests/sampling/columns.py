"""Building SamplingColumns by hand for tests that exercise the pure sampler without per-sequence state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.sampling.columns import NO_LOGPROBS, RowParameters, SamplingColumns, TokenEdits


@dataclass(frozen=True)
class TokenValues:
    """Sparse per-row token data: row rows[i] has value values[i] for token tokens[i]."""

    rows: NDArray[np.int64]
    tokens: NDArray[np.int64]
    values: NDArray[np.float32]

    @staticmethod
    def empty() -> TokenValues:
        return TokenValues(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))


def make_columns(
    batch: int,
    *,
    temperature: float | list[float] = 1.0,
    top_k: int | list[int] = 0,
    top_p: float | list[float] = 1.0,
    min_p: float | list[float] = 0.0,
    uniform: NDArray[np.float64] | None = None,
    top_logprobs: int | list[int] = NO_LOGPROBS,
    logit_bias: TokenValues | None = None,
    history: TokenValues | None = None,
    suppressed: TokenValues | None = None,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
) -> SamplingColumns:
    """Columns for `batch` rows; a scalar applies to every row, a list gives one value per row."""

    def column(value: float | list[float] | list[int], dtype: type) -> NDArray[Any]:
        return np.broadcast_to(np.asarray(value, dtype=dtype).reshape(-1, 1), (batch, 1)).copy()

    return SamplingColumns(
        parameters=RowParameters(
            temperature=column(temperature, np.float32),
            top_k=column(top_k, np.int64),
            top_p=column(top_p, np.float64),
            min_p=column(min_p, np.float32),
            top_logprobs=column(top_logprobs, np.int64),
        ),
        uniform=(np.zeros((batch, 1)) if uniform is None else uniform.reshape(batch, 1)),
        edits=token_edits(
            logit_bias or TokenValues.empty(),
            history or TokenValues.empty(),
            repetition_penalty,
            frequency_penalty,
            presence_penalty,
            suppressed or TokenValues.empty(),
        ),
    )


def token_edits(
    bias: TokenValues,
    history: TokenValues,
    repetition: float,
    frequency: float,
    presence: float,
    suppressed: TokenValues | None = None,
) -> TokenEdits:
    """TokenEdits by their definition (columns.py): one entry per (row, token) in the bias, the
    history (history values: times generated) or the suppressed tokens (bias -inf), in row order."""
    entries: dict[tuple[int, int], list[float]] = {}  # (row, token) -> [bias, divisor, subtract]
    for row, token, value in zip(bias.rows.tolist(), bias.tokens.tolist(), bias.values.tolist(), strict=True):
        entries[(row, token)] = [value, 1.0, 0.0]
    for row, token, count in zip(
        history.rows.tolist(), history.tokens.tolist(), history.values.tolist(), strict=True
    ):
        entry = entries.setdefault((row, token), [0.0, 1.0, 0.0])
        entry[1] = repetition
        entry[2] = frequency * count + presence * (count > 0)
    if suppressed is not None:
        for row, token in zip(suppressed.rows.tolist(), suppressed.tokens.tolist(), strict=True):
            entries.setdefault((row, token), [0.0, 1.0, 0.0])[0] = -np.inf
    keys = sorted(entries)
    values = np.array([entries[key] for key in keys], np.float32).reshape(-1, 3)
    return TokenEdits(
        np.array([row for row, _ in keys], np.int64), np.array([token for _, token in keys], np.int64), values
    )
