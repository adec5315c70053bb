"""Steps 1-3 of the sampler: logit_bias, penalties and suppression, as sparse edits of a few rows.

The new values are computed for all (row, token) pairs of the batch at once, from the raw logits; a row
with edits is then materialised one at a time in a reused (V,) buffer (an L2-resident copy of the row
it is about to read anyway), never as a fresh (B, V) copy: copying the batch costs ~15 µs per row here,
as much as everything else a greedy row does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.sampling.columns import FloatArray, IndexArray, SamplingColumns, TokenValues


@dataclass(frozen=True)
class RowEdits:
    """One row's steps 1-3 as sparse writes: distinct tokens, their logits before and after."""

    tokens: IndexArray
    raw: FloatArray
    edited: FloatArray


class EditedRows:
    """row -> that row's logits after steps 1-3. An edited row lives in a shared buffer that the next
    lookup overwrites; an unedited row is a view of the input. `row_edits(row)` gives the same edits
    sparsely."""

    def __init__(self, logits: FloatArray, columns: SamplingColumns) -> None:
        self.logits = logits
        bias, history, suppressed = columns.logit_bias, columns.history, columns.suppressed
        # One write per (row, token), the last step's: suppression (-inf) over the penalties, whose values
        # already include the bias of the same token, over the bias alone.
        parts: list[tuple[TokenValues, FloatArray]] = []
        if len(suppressed):
            parts.append((suppressed, np.full(len(suppressed), -np.inf, np.float32)))
        if len(history):
            parts.append((history, _penalised(logits, columns)))
        if len(bias):
            parts.append((bias, _gather(logits, bias) + bias.values))
        self.any = bool(parts)
        if not self.any:
            return
        batch, vocab = logits.shape
        self._buffer = np.empty(vocab, np.float32)
        rows = np.concatenate([part.rows for part, _ in parts])
        tokens = np.concatenate([part.tokens for part, _ in parts])
        edited = np.concatenate([values for _, values in parts])
        if len(parts) > 1:  # pairs may repeat across steps: keep each one's first, the later step's
            _, first = np.unique(rows * vocab + tokens, return_index=True)
            rows, tokens, edited = rows[first], tokens[first], edited[first]
        elif rows.size > 1 and (rows[1:] < rows[:-1]).any():  # build_columns emits them in row order
            order = rows.argsort(kind="stable")
            rows, tokens, edited = rows[order], tokens[order], edited[order]
        self._tokens, self._edited_values = tokens, edited
        self._raw = _gather(logits, TokenValues(rows, tokens, edited))
        self._ends: list[int] = np.bincount(rows, minlength=batch).cumsum().tolist()

    def _span(self, row: int) -> slice:
        return slice(self._ends[row - 1] if row else 0, self._ends[row])

    def is_edited(self, row: int) -> bool:
        if not self.any:
            return False
        span = self._span(row)
        return bool(span.stop > span.start)

    def row_edits(self, row: int) -> RowEdits:
        """Row `row`'s edits: distinct tokens with their logits before and after steps 1-3."""
        span = self._span(row)
        return RowEdits(self._tokens[span], self._raw[span], self._edited_values[span])

    def __getitem__(self, row: int) -> FloatArray:
        if not self.is_edited(row):
            view: FloatArray = self.logits[row]
            return view
        span = self._span(row)
        np.copyto(self._buffer, self.logits[row])
        self._buffer[self._tokens[span]] = self._edited_values[span]
        return self._buffer


def _gather(logits: FloatArray, part: TokenValues) -> FloatArray:
    if logits.flags.c_contiguous:  # a flat take is ~3× faster than 2-D fancy indexing
        values: FloatArray = logits.reshape(-1).take(part.rows * logits.shape[1] + part.tokens)
        return values
    gathered: FloatArray = logits[part.rows, part.tokens]
    return gathered


def _penalised(logits: FloatArray, columns: SamplingColumns) -> FloatArray:
    """History tokens' logits after their bias, then the repetition, frequency and presence penalties."""
    history, bias = columns.history, columns.logit_bias
    values = _gather(logits, history)
    if len(history) and len(bias):
        values += _matching(bias, history, logits.shape[1])
    penalty = columns.repetition_penalty.ravel().take(history.rows)
    values = np.where(values > 0.0, values / penalty, values * penalty)
    counts = history.values
    values -= columns.frequency_penalty.ravel().take(history.rows) * counts
    values -= columns.presence_penalty.ravel().take(history.rows) * (counts > 0.0)
    return values


def _matching(bias: TokenValues, history: TokenValues, vocab: int) -> FloatArray:
    """For each history pair, the bias of the same (row, token), or 0."""
    bias_keys = bias.rows * vocab + bias.tokens
    order = bias_keys.argsort()
    sorted_keys = bias_keys[order]
    history_keys = history.rows * vocab + history.tokens
    position = np.minimum(sorted_keys.searchsorted(history_keys), sorted_keys.size - 1)
    found = sorted_keys[position] == history_keys
    result: FloatArray = np.where(found, bias.values[order][position], np.float32(0.0))
    return result
