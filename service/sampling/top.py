"""Sampling a row from its most likely tokens: what the graph's sampling head gives the sampler.

With Parley's kernels the decode graph ends in a SamplingHead (service/engine/kernels/parley_ops.c) that
applies each row's edits (logit_bias, penalties, suppression: SamplingColumns.edits), then hands back,
per row, its K most likely tokens (K = 64) in the order (logit descending, id ascending), and the
softmax normalisers the row's parameters need: Σ e^((x - max)·scale) at scale 1/T for a row that needs
its whole mass, at 1 for a row that reports logprobs (RowParameters.head_scales says which). Every other
token's logit is at most the K-th one's, so the candidates are exactly the top of the edited row, and
most rows are decided on them:
- greedy: the first candidate;
- untruncated: a draw u·mass that lands within the candidates' weight picks among them in descending
  order; one beyond them (the tail) draws from the rest of the row, given that it landed there;
- top_k / top_p / min_p: draw.kept_threshold on the candidates' weights, when they can prove the cut;
- logprobs (of the raw row): the normaliser at scale 1, the top alternatives from the candidates, for
  an unedited row (an edited row's candidates are not the raw row's: it reads its row).
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

from service.sampling.columns import FloatArray, HeadInputs, IndexArray, SamplingColumns, TokenLogprobs
from service.sampling.draw import kept_threshold

TOP_TOKENS = 64  # K: candidates per row (a cut at top_p 0.95 and T 1 lies within them for most rows)


@dataclass(frozen=True)
class TopTokens:
    """The sampling head's outputs for B rows (views of the runner's buffers, valid until its next run)."""

    inputs: HeadInputs  # what they were computed for (SamplingColumns.head)
    ids: IndexArray  # (B, K) each edited row's K most likely tokens: logit descending, id ascending; -1 pads
    logits: FloatArray  # (B, K) their edited logits; -inf pads
    masses: NDArray[np.float64]  # (B, 2) Σ e^((x - max)·scale) per scale, 0 where the scale is 0;
    # NaN in both when the edited row has no finite maximum (NaN, +inf, or nothing above -inf)

    def holds(self, row: int, count: int) -> bool:
        """Whether the row has `count` candidates (K unless fewer than K of its logits are above -inf)."""
        return count <= self.ids.shape[1] and (count == 0 or int(self.ids[row, count - 1]) >= 0)

    def select(self, rows: Sequence[int], inputs: HeadInputs) -> TopTokens:
        """The outputs of `rows` alone, renumbered as `inputs` (the head of SamplingColumns.select(rows))."""
        index = np.asarray(rows, np.int64)
        return TopTokens(inputs, self.ids[index], self.logits[index], self.masses[index])


@dataclass(frozen=True)
class TailDraw:
    """The draw landed beyond the candidates: draw from every other token with this uniform."""

    uniform: float
    excluded: IndexArray  # the candidates, whose weight the draw has already passed


_FINITE = float(np.finfo(np.float32).max)


class CandidateDraws:
    """Every row's candidates as the sampler decides on them, computed for the batch at once: their
    weights e^((x - max)/T) at each row's 1/T (SamplingColumns.draw_scales), running sums, and the
    row's mass at 1/T where head_scales asked for it. Every token outside a row's candidates has a
    logit at most the K-th candidate's (its floor), so only candidates above it are usable."""

    def __init__(self, top: TopTokens, columns: SamplingColumns) -> None:
        self.greedy: list[int] = top.ids[:, 0].tolist()  # the argmax, lowest id on ties
        if not columns.parameters.any_sampled:
            return
        logits = top.logits
        # relative to each row's maximum (0 for a row without a finite one: it fails, but not with inf - inf)
        shift = np.fmax(np.fmin(logits[:, :1], _FINITE, dtype=np.float64), -_FINITE)
        weights = np.exp((logits - shift) * columns.draw_scales[:, None])
        floors = weights[:, -1:]  # the K-th candidate's: every other token weighs at most this
        self.usable: list[int] = (weights > floors).sum(axis=1).tolist()  # a prefix: the weights descend
        self.floors: list[float] = floors[:, 0].tolist()
        self.masses: list[float] = (top.masses[:, 0] * columns.parameters.mass_mask).tolist()
        self.ids, self.weights, self.running = top.ids, weights, weights.cumsum(axis=1)

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
    tokens, from the normaliser at scale 1 (of an unedited row: the head saw the raw logits)."""
    log_normaliser = float(top.logits[row, 0]) + math.log(float(top.masses[row, 1]))
    top_ids = tuple(top.ids[row, :count].tolist())
    return TokenLogprobs(
        logprob=token_logit - log_normaliser,
        top_ids=top_ids,
        top_logprobs=tuple(value - log_normaliser for value in top.logits[row, :count].tolist()),
    )
