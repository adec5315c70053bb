"""Sampling a row from its most likely tokens: what the graph's sampling head gives the sampler.

With Parley's kernels the decode graph ends in a SamplingHead (service/engine/kernels/parley_ops.c) that
hands back, per row, its K most likely tokens (K = 64) in the order (logit descending, id ascending),
and the softmax normalisers the row's parameters need: Σ e^((x - max)·scale) at scale 1/T for a row
that needs its whole mass, at 1 for a row that reports logprobs (SamplingColumns.head_scales says
which). Every other token's logit is at most the K-th one's, so the candidates are exactly the top of
the row, and most rows are decided on them:
- greedy: the first candidate;
- untruncated: a draw u·mass that lands within the candidates' weight picks among them in descending
  order; one beyond them (the tail) draws from the rest of the row, given that it landed there;
- top_k / top_p / min_p: draw.kept_threshold on the candidates' weights, when they can prove the cut;
- logprobs: the normaliser at scale 1, the top alternatives from the candidates.
A row with edits (logit_bias, penalties, suppression: sparse writes) is decided the same way on its raw
candidates merged with its edited tokens (CandidateDraws); its mass is the raw mass corrected by the
edited tokens' change, or its edited row summed where the edits took nearly all of it.
A row the candidates cannot decide (a cut below them, a tail draw) reads its whole row, as without the
head. The kept set is exact either way; the draw order (descending weight among the candidates, then
token ids) differs from the whole-row path's (token ids), so a seeded request gives its tokens for the
configuration it runs in, as its logits are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.sampling.columns import FloatArray, IndexArray, SamplingColumns, TokenLogprobs
from service.sampling.draw import kept_threshold, stripe_sums, weights_into
from service.sampling.edits import EditedRows

TOP_TOKENS = 64  # K: candidates per row (a cut at top_p 0.95 and T 1 lies within them for most rows)


@dataclass(frozen=True)
class TopTokens:
    """The sampling head's outputs for B rows (views of the runner's buffers, valid until its next run)."""

    scales: FloatArray  # (B, 2) the head_scales they were computed for
    ids: IndexArray  # (B, K) each row's K most likely tokens: logit descending, id ascending; -1 pads
    logits: FloatArray  # (B, K) their logits; -inf pads
    masses: NDArray[np.float64]  # (B, 2) Σ e^((x - max)·scale) per scale, 0 where the scale is 0;
    # NaN in both when the row has no finite maximum (NaN, +inf, or nothing above -inf)

    def holds(self, row: int, count: int) -> bool:
        """Whether the row has `count` candidates (K unless fewer than K of its logits are above -inf)."""
        return count <= self.ids.shape[1] and (count == 0 or int(self.ids[row, count - 1]) >= 0)

    def select(self, rows: Sequence[int]) -> TopTokens:
        index = np.asarray(rows, np.int64)
        return TopTokens(self.scales[index], self.ids[index], self.logits[index], self.masses[index])


@dataclass(frozen=True)
class TailDraw:
    """The draw landed beyond the candidates: draw from every other token with this uniform."""

    uniform: float
    excluded: IndexArray  # the candidates, whose weight the draw has already passed


_CANCELLATION = 1.0 / 64  # an edited row's mass from the raw one only while the edits leave this share


class CandidateDraws:
    """Every row's candidates as the sampler decides on them, computed for the batch at once: the head's
    candidates, and for an edited row those merged with its edited tokens (the unedited candidates keep
    their logits, an edited token joins with its new logit when that is above the row's floor); their
    weights e^((x - max)/T) at each row's 1/T (SamplingColumns.draw_scales), running sums, and the
    row's mass at 1/T where head_scales asked for it (an edited row's: the raw mass less its edited
    tokens' raw weights plus their new ones). Every token outside a row's candidates has a logit at
    most the row's floor, the K-th raw candidate's (none is edited), so only candidates above it are
    certain to be the top of the row."""

    def __init__(self, top: TopTokens, columns: SamplingColumns, edited: EditedRows) -> None:
        if not edited.any and not columns.inverse_temperature.any():  # all greedy, unedited: first candidates
            self.greedy: list[int | None] = top.ids[:, 0].tolist()
            return
        scales = columns.draw_scales
        floors, masses = top.logits[:, -1], np.where(top.scales[:, 0] > 0.0, top.masses[:, 0], np.nan)
        ids, logits, edited_rows = top.ids, top.logits, edited.edited_rows
        if edited.any:
            ids, logits = _merge_edits(top, edited, floors)
        maxima = logits[:, 0]
        shift = np.where(np.isfinite(maxima), maxima, np.float32(0.0)).astype(np.float64)  # no inf - inf
        if edited.any:
            masses = _edited_masses(top, edited, masses, shift, scales, edited_rows & (maxima > floors))
        weights = np.exp((logits - shift[:, None]) * scales[:, None])
        floor_weights = np.exp(np.minimum((floors - shift) * scales, 0.0))  # >= 1: nothing usable
        usable = (weights > floor_weights[:, None]).sum(axis=1)  # a prefix: the weights descend
        # The first candidate is the argmax of an unedited row; an edited row's only above its floor.
        certain = (maxima > floors) | ~edited_rows
        self.greedy = [
            token if sure else None for token, sure in zip(ids[:, 0].tolist(), certain.tolist(), strict=True)
        ]
        self.usable: list[int] = usable.tolist()
        self.floors: list[float] = floor_weights.tolist()
        self.masses: list[float] = masses.tolist()
        self.ids, self.weights, self.running = ids, weights, weights.cumsum(axis=1)

    def draw(
        self, row: int, *, top_k: int, top_p: float, min_p: float, uniform: float
    ) -> int | TailDraw | None:
        """Row `row`'s token, as draw_from's result."""
        usable = self.usable[row]
        if usable == 0:
            return None
        return draw_from(
            self.ids[row, :usable],
            self.weights[row, :usable],
            self.running[row, :usable],
            self.floors[row],
            self.masses[row],
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            uniform=uniform,
        )


def _merge_edits(top: TopTokens, edited: EditedRows, floors: FloatArray) -> tuple[IndexArray, FloatArray]:
    """(ids, logits) of every row's candidates with its edits merged, sorted (logit descending, id
    ascending): the edited candidates leave (-inf, sorted last), the edited tokens above the floor join
    in extra columns."""
    batch, vocab = top.ids.shape[0], edited.logits.shape[1]
    rows, tokens, values = edited.rows, edited.tokens, edited.values
    row_index = np.arange(batch)[:, None]
    keys = row_index * vocab + top.ids  # a pad (id -1) is -inf whatever it matches
    edited_keys = np.sort(rows * vocab + tokens)  # np.isin hashes both sides: 30x slower at this size
    found = edited_keys.take(np.minimum(edited_keys.searchsorted(keys), edited_keys.size - 1)) == keys
    logits = np.where(found, np.float32(-np.inf), top.logits)
    ids = top.ids
    joins = np.flatnonzero(values > floors[rows])
    if joins.size:
        join_rows = rows[joins]  # ascending: EditedRows keeps its entries in row order
        position = np.arange(joins.size) - join_rows.searchsorted(join_rows, "left")
        extra_ids = np.full((batch, int(position.max()) + 1), -1, np.int64)
        extra_logits = np.full(extra_ids.shape, -np.inf, np.float32)
        extra_ids[join_rows, position], extra_logits[join_rows, position] = tokens[joins], values[joins]
        ids = np.concatenate([ids, extra_ids], axis=1)
        logits = np.concatenate([logits, extra_logits], axis=1)
    order = np.lexsort((ids, -logits), axis=1)
    return ids[row_index, order], logits[row_index, order]


def _edited_masses(
    top: TopTokens,
    edited: EditedRows,
    masses: NDArray[np.float64],
    shift: NDArray[np.float64],
    scales: NDArray[np.float64],
    certain: NDArray[np.bool_],
) -> NDArray[np.float64]:
    """Each edited row's mass relative to its new maximum `shift`: the raw mass, less the edited tokens'
    raw weights, plus their new ones, for the `certain` rows (edited, with a maximum above their floor;
    NaN where no mass was asked for). Where the edits took nearly all of the raw mass the difference
    would be imprecise: such a row is summed whole instead."""
    rows, scale = edited.rows, scales[edited.rows]
    removed = np.bincount(rows, np.exp((edited.raw - shift[rows]) * scale), minlength=masses.size)
    added = np.bincount(rows, np.exp((edited.values - shift[rows]) * scale), minlength=masses.size)
    raw = masses * np.exp((top.logits[:, 0] - shift) * scales)  # the raw mass at the new maximum
    kept = raw - removed
    result: NDArray[np.float64] = np.where(certain, kept + added, masses)
    for row in np.flatnonzero(certain & (kept < _CANCELLATION * raw)).tolist():
        buffer = np.empty(edited.logits.shape[1], np.float32)
        scale2 = np.float32(scales[row] / math.log(2.0))  # weights_into's exp2 scale
        result[row] = float(
            stripe_sums(weights_into(edited[row], np.float32(shift[row]), scale2, buffer))[0].sum()
        )
    return result


def draw_from(
    ids: IndexArray,
    weights: NDArray[np.float64],
    running: NDArray[np.float64],
    floor: float,
    mass: float,
    *,
    top_k: int,
    top_p: float,
    min_p: float,
    uniform: float,
) -> int | TailDraw | None:
    """A token from a row's candidates: ids with weights (relative to the row's top token, descending,
    all above `floor`, which every other token's weight is at most) and their running sums; `mass` the
    whole row's weight (nan when the parameters do not need it). Returns the token, a TailDraw, or None
    when the candidates cannot decide the cut (the row's whole logits must)."""
    if not top_k and top_p >= 1.0 and min_p <= 0.0:
        target = uniform * mass
        within = float(running[-1])
        if target < within:
            return int(ids[int(running.searchsorted(target, "right"))])
        beyond = min(max((target - within) / (mass - within), 0.0), math.nextafter(1.0, 0.0))
        return TailDraw(beyond, ids)
    level = math.nextafter(floor, math.inf)  # the candidates: exactly the tokens weighing >= level
    threshold = kept_threshold(weights, top_k, top_p, min_p, mass, level, running=running)
    if threshold is None:
        return None
    kept = weights.size if threshold <= weights[-1] else int(np.count_nonzero(weights >= threshold))
    return int(ids[int(running[:kept].searchsorted(uniform * float(running[kept - 1]), "right"))])


def logprobs_from_top(top: TopTokens, row: int, token_logit: float, count: int) -> TokenLogprobs:
    """The raw log_softmax of a token with logit `token_logit` and the row's `count` (<= K) most likely
    tokens, from the normaliser at scale 1."""
    log_normaliser = float(top.logits[row, 0]) + math.log(float(top.masses[row, 1]))
    top_ids = tuple(top.ids[row, :count].tolist())
    return TokenLogprobs(
        logprob=token_logit - log_normaliser,
        top_ids=top_ids,
        top_logprobs=tuple(value - log_normaliser for value in top.logits[row, :count].tolist()),
    )
