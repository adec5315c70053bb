"""The batch sampler: one pure function of (logits, per-row parameter columns, per-row uniform draws).

`sample(logits, columns)` picks one token for each of the B rows of a decode step. Every row has its own
parameters, held as [B, 1] columns in the style of TGI's utils/tokens.py; a row that does not use a stage
carries its neutral value (temperature 1, top_k 0, top_p 1, min_p 0, penalties 1 / 0 / 0), and a stage
that no row uses is skipped. The steps, in order:

1. logit_bias: add each (row, token) bias.
2. penalties over each row's history: repetition_penalty (prompt + generated tokens; a positive logit is
   divided by it, a negative one multiplied), then frequency and presence (generated tokens only:
   minus frequency × count + presence × (count > 0)).
3. suppression: -inf for end-of-sequence / stop tokens a row may not emit yet (min_tokens, ignore_eos).
4. temperature: rows with temperature 0 take the argmax here (lowest id on ties) and skip the rest.
5-7. top_k, top_p, min_p: the kept set, found without sorting the vocabulary (see draw.py).
8. sample: inverse CDF with the row's uniform draw.

The draws come from each request's own seeded generator (see state.py), and every step works on one row
alone, so a seeded request gets the same tokens whatever else is in the batch and in whatever row order.

Logprobs are those of the model's raw distribution, log_softmax(logits) before any of the steps above,
as OpenAI reports them and vLLM does by default: they say how likely the model found the token, not how
the request's sampling settings reshaped it (greedy rows would otherwise report 0 for every token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.errors import EngineFailure
from service.sampling.draw import CANDIDATE_LEVELS, draw_row

FloatArray = NDArray[np.float32]
IndexArray = NDArray[np.int64]
LOG2E = 1.0 / math.log(2.0)
NO_LOGPROBS = -1  # top_logprobs column value of a row that asked for no logprobs


@dataclass(frozen=True)
class TokenValues:
    """Sparse per-row token data: row rows[i] has value values[i] for token tokens[i]. A (row, token)
    pair appears at most once."""

    rows: IndexArray
    tokens: IndexArray
    values: FloatArray

    @staticmethod
    def empty() -> TokenValues:
        return TokenValues(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))

    def __len__(self) -> int:
        return int(self.rows.size)


@dataclass(frozen=True)
class SamplingColumns:
    """One decode step's parameters for B rows. Float columns are float32 except top_p and uniform
    (float64, compared with float64 running sums)."""

    temperature: FloatArray  # (B, 1); 0 = greedy
    top_k: IndexArray  # (B, 1); 0 = no limit
    top_p: NDArray[np.float64]  # (B, 1); 1 = off
    min_p: FloatArray  # (B, 1); 0 = off
    repetition_penalty: FloatArray  # (B, 1); 1 = off
    frequency_penalty: FloatArray  # (B, 1); 0 = off
    presence_penalty: FloatArray  # (B, 1); 0 = off
    top_logprobs: IndexArray  # (B, 1); NO_LOGPROBS, or how many alternatives to report (0..20)
    uniform: NDArray[np.float64]  # (B, 1); the row's draw in [0, 1), unused by greedy rows
    logit_bias: TokenValues  # values: the bias
    history: TokenValues  # penalised rows only; values: times generated (0 = only in the prompt)
    suppressed: TokenValues  # values unused

    @property
    def batch_size(self) -> int:
        return int(self.temperature.shape[0])


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


class NonFiniteLogits(EngineFailure):
    """The model produced a row with NaN or +inf, or a row with every token suppressed."""

    def __init__(self, rows: list[int]) -> None:
        super().__init__(f"logits of batch rows {rows} have no finite maximum (NaN, +inf or all -inf)")
        self.rows = rows


def sample(
    logits: FloatArray, columns: SamplingColumns, *, levels: tuple[float, ...] = CANDIDATE_LEVELS
) -> SampledTokens:
    """Pick one token per row of logits (B, V) float32. `logits` is not modified.

    `levels` are draw.py's candidate levels; () sends every truncated row through the whole-row path.
    """
    if logits.ndim != 2 or logits.shape[0] != columns.batch_size:
        raise ValueError(f"logits must be (B={columns.batch_size}, V), got {logits.shape}")
    edited = EditedRows(logits, columns)
    temperature = columns.temperature[:, 0]
    if not edited.any and not temperature.any():  # fast path: every row greedy, nothing to edit
        tokens = logits.argmax(axis=1).astype(np.int64)
        _check_finite(logits[np.arange(tokens.size), tokens])
    else:
        tokens = _sample_rows(edited, columns, levels)
    return SampledTokens(tokens, logprobs_of(logits, tokens, columns.top_logprobs))


class EditedRows:
    """Steps 1-3. Rows with a bias, penalty or suppression get a private edited copy; the others are
    views of the input."""

    def __init__(self, logits: FloatArray, columns: SamplingColumns) -> None:
        self.logits = logits
        bias, history, suppressed = columns.logit_bias, columns.history, columns.suppressed
        self.any = bool(len(bias) or len(history) or len(suppressed))
        self._slot: dict[int, int] = {}
        if not self.any:
            return
        rows = np.unique(np.concatenate([bias.rows, history.rows, suppressed.rows]))
        self._slot = dict(zip(rows.tolist(), range(rows.size), strict=True))
        compact = np.full(logits.shape[0], -1, np.int64)
        compact[rows] = np.arange(rows.size)
        self._copies = copies = logits[rows]  # (E, V)
        if len(bias):
            copies[compact[bias.rows], bias.tokens] += bias.values
        if len(history):
            at, tokens, counts = compact[history.rows], history.tokens, history.values
            values = copies[at, tokens]
            penalty = columns.repetition_penalty[history.rows, 0]
            values = np.where(values > 0.0, values / penalty, values * penalty)
            values -= columns.frequency_penalty[history.rows, 0] * counts
            values -= columns.presence_penalty[history.rows, 0] * (counts > 0.0)
            copies[at, tokens] = values
        if len(suppressed):
            copies[compact[suppressed.rows], suppressed.tokens] = -np.inf

    def __getitem__(self, row: int) -> FloatArray:
        slot = self._slot.get(row)
        row_logits: FloatArray = self.logits[row] if slot is None else self._copies[slot]
        return row_logits


def _sample_rows(edited: EditedRows, columns: SamplingColumns, levels: tuple[float, ...]) -> IndexArray:
    """Steps 4-8, row by row: each row's work is a few passes over V, so the loop costs little."""
    batch, vocab = edited.logits.shape
    tokens = np.empty(batch, np.int64)
    buffer = np.empty(vocab, np.float32)  # one row's weights, reused (stays in cache)
    parameters = zip(
        columns.temperature[:, 0].tolist(),
        columns.top_k[:, 0].tolist(),
        columns.top_p[:, 0].tolist(),
        columns.min_p[:, 0].tolist(),
        columns.uniform[:, 0].tolist(),
        strict=True,
    )
    for row, (temperature, top_k, top_p, min_p, uniform) in enumerate(parameters):
        logits = edited[row]
        if temperature == 0.0:
            tokens[row] = logits.argmax()
            if not math.isfinite(logits[tokens[row]]):
                raise NonFiniteLogits([row])
            continue
        row_max = logits.max()
        if not math.isfinite(row_max):
            raise NonFiniteLogits([row])
        scale = np.float32(LOG2E / temperature)
        tokens[row] = draw_row(
            logits,
            row_max,
            scale,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            uniform=uniform,
            buffer=buffer,
            levels=levels,
        )
    return tokens


def _check_finite(row_maxima: FloatArray) -> None:
    bad = ~np.isfinite(row_maxima)
    if bad.any():
        raise NonFiniteLogits(np.flatnonzero(bad).tolist())


def logprobs_of(
    logits: FloatArray, tokens: IndexArray, top_logprobs: IndexArray
) -> tuple[TokenLogprobs | None, ...]:
    """Raw log_softmax of the chosen tokens and of each row's `top_logprobs` most likely tokens."""
    wanted = top_logprobs[:, 0]
    if (wanted == NO_LOGPROBS).all():
        return (None,) * int(logits.shape[0])
    return tuple(
        None if count == NO_LOGPROBS else _row_logprobs(logits[row], int(tokens[row]), int(count))
        for row, count in enumerate(wanted.tolist())
    )


def _row_logprobs(logits: FloatArray, token: int, count: int) -> TokenLogprobs:
    top = float(logits.max())
    shifted = logits - np.float32(top)
    shifted *= np.float32(LOG2E)
    log_normaliser = top + math.log(float(np.exp2(shifted, out=shifted).sum(dtype=np.float64)))
    top_ids: tuple[int, ...] = ()
    if count:
        for margin in (8.0, 16.0, 32.0, math.inf):  # logits within `margin` of the top, until enough
            ids = np.flatnonzero(logits >= top - margin)
            if ids.size >= count:
                break
        order = np.lexsort((ids, -logits[ids]))[:count]  # descending logit, then ascending id
        top_ids = tuple(ids[order].tolist())
    return TokenLogprobs(
        logprob=float(logits[token]) - log_normaliser,
        top_ids=top_ids,
        top_logprobs=tuple(float(logits[i]) - log_normaliser for i in top_ids),
    )
