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
candidates merged with its edited tokens (EditedCandidates); its mass is the raw mass corrected by the
edited tokens' change.
A row the candidates cannot decide (a cut below them, a tail draw, edits that remove nearly all the
mass) reads its whole row, as without the head. The kept set is exact either way; the draw order
(descending weight among the candidates, then token ids) differs from the whole-row path's (token
ids), so a seeded request gives its tokens for the configuration it runs in, as its logits are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.sampling.columns import FloatArray, IndexArray, TokenLogprobs
from service.sampling.draw import kept_threshold
from service.sampling.edits import RowEdits

TOP_TOKENS = 64  # K: candidates per row (a cut at top_p 0.95 and T 1 lies within them for most rows)


@dataclass(frozen=True)
class TopTokens:
    """The sampling head's outputs for B rows (views of the runner's buffers, valid until its next run)."""

    scales: FloatArray  # (B, 2) the head_scales they were computed for
    ids: IndexArray  # (B, K) each row's K most likely tokens: logit descending, id ascending; -1 pads
    logits: FloatArray  # (B, K) their logits; -inf pads
    masses: NDArray[np.float64]  # (B, 2) Σ e^((x - max)·scale) per scale, 0 where the scale is 0;
    # NaN in both when the row has no finite maximum (NaN, +inf, or nothing above -inf)

    def valid(self, row: int) -> int:
        """How many candidates the row has (K unless fewer than K of its logits are above -inf)."""
        return int(np.count_nonzero(self.ids[row] >= 0))

    def select(self, rows: Sequence[int]) -> TopTokens:
        index = np.asarray(rows, np.int64)
        return TopTokens(self.scales[index], self.ids[index], self.logits[index], self.masses[index])


@dataclass(frozen=True)
class TailDraw:
    """The draw landed beyond the candidates: draw from every other token with this uniform."""

    uniform: float
    excluded: IndexArray  # the candidates, whose weight the draw has already passed


class CandidateDraws:
    """Draws from the candidates of a batch: their weights e^((x - max)/T) at each row's own 1/T
    (`inverse`, 0 for greedy rows: not drawn), and the running sums, computed for all rows at once."""

    def __init__(self, top: TopTokens, inverse: FloatArray) -> None:
        self.ids = top.ids
        # Greedy rows draw nothing: scale 1 keeps their -inf pads at weight 0 rather than NaN (-inf · 0).
        scales = np.where(inverse > 0.0, inverse, np.float32(1.0)).astype(np.float64)
        finite = np.isfinite(top.logits[:, 0]).all()
        with nullcontext() if finite else np.errstate(invalid="ignore"):  # rows the caller fails
            weights = np.exp((top.logits - top.logits[:, :1]).astype(np.float64) * scales[:, None])
        # A token outside the candidates weighs at most the last candidate: only those above it are
        # certain to be the top of the row (a prefix: the weights descend).
        floors = weights[:, -1]
        self.usable: list[int] = (weights > floors[:, None]).sum(axis=1).tolist()
        self.floors: list[float] = floors.tolist()
        self.weights = weights
        self.running = weights.cumsum(axis=1)

    def draw(
        self, row: int, mass: float, *, top_k: int, top_p: float, min_p: float, uniform: float
    ) -> int | TailDraw | None:
        """Row `row`'s token given its mass at its 1/T (nan where head_scales did not ask for it: it is
        not needed then); the result as draw_from's."""
        usable = self.usable[row]
        if usable == 0:
            return None
        return draw_from(
            self.ids[row, :usable],
            self.weights[row, :usable],
            self.running[row, :usable],
            self.floors[row],
            mass,
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


_CANCELLATION = 1.0 / 64  # an edited row's mass from the raw one only while the edits leave this share


class EditedCandidates:
    """An edited row decided on its raw candidates: the unedited ones keep their logits, the edited
    tokens join with their new ones; every other token is unedited, so its logit is at most the K-th
    raw candidate's. `marks` is (V,) bool scratch, all False."""

    def __init__(self, top: TopTokens, row: int, edits: RowEdits, marks: NDArray[np.bool_]) -> None:
        valid = top.valid(row)
        raw_ids, raw_logits = top.ids[row, :valid], top.logits[row, :valid]
        self.floor = float(top.logits[row, -1])  # -inf when the row has fewer than K candidates
        self.raw_max = float(top.logits[row, 0])
        marks[edits.tokens] = True
        unedited = ~marks[raw_ids]
        marks[edits.tokens] = False
        contenders = edits.edited > self.floor  # edited tokens that may rank among the candidates
        ids = np.concatenate([raw_ids[unedited], edits.tokens[contenders]])
        logits = np.concatenate([raw_logits[unedited], edits.edited[contenders]])
        order = np.lexsort((ids, -logits))  # logit descending, id ascending
        self.ids, self.logits, self.edits = ids[order], logits[order], edits

    def argmax(self) -> int | None:
        """The greedy token, or None when it may lie outside the candidates."""
        return int(self.ids[0]) if self.ids.size and self.logits[0] > self.floor else None

    def draw(
        self, raw_mass: float, scale: float, *, top_k: int, top_p: float, min_p: float, uniform: float
    ) -> int | TailDraw | None:
        """As CandidateDraws.draw, with the raw row's mass at `scale` = 1/T (nan when not needed)."""
        if not self.ids.size or not self.logits[0] > self.floor:
            return None
        top = float(self.logits[0])
        weights = np.exp((self.logits - top).astype(np.float64) * scale)
        floor = math.exp((self.floor - top) * scale)
        usable = int(np.count_nonzero(weights > floor))
        mass = math.nan
        if not math.isnan(raw_mass):  # the raw mass, less the edited tokens' raw weights, plus their new
            kept = raw_mass * math.exp((self.raw_max - top) * scale)
            kept -= float(np.exp((self.edits.raw - top).astype(np.float64) * scale).sum())
            if kept < _CANCELLATION * raw_mass * math.exp((self.raw_max - top) * scale):
                return None  # the edits took nearly all the mass: the difference would be imprecise
            mass = kept + float(np.exp((self.edits.edited - top).astype(np.float64) * scale).sum())
        weights = weights[:usable]
        return draw_from(
            self.ids[:usable],
            weights,
            weights.cumsum(),
            floor,
            mass,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            uniform=uniform,
        )


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
