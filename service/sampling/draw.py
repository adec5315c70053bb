"""Steps 4-8 for one row: temperature, top_k, top_p, min_p and the draw, exactly and without a full sort.

A row's weights are w = 2^((x - max x) · s) with s = log2(e) / T: float32 in [0, 1], the unnormalised
softmax at temperature T with the top token at exactly 1. Truncation keeps the tokens whose weight
reaches a threshold t = max(t_k, t_p, t_m):
- top_k: t_k = the k-th largest weight (tokens tied with it are kept too, as Hugging Face does);
- top_p: sort the weights in descending order; t_p = the first one at which the float64 running sum
  reaches top_p · S, where S is the top-k set's mass when top_k is on, else the whole row's (ties kept);
- min_p: t_m = min_p (relative to the top token's weight, which is 1).
A full-vocabulary sort costs ~1 ms per row here, so t is computed on a candidate set {w >= level}, which
is exactly the top of the sorted order: the level is lowered (2^-12, 2^-24, then the whole row) only
when the candidates cannot prove where the cut falls. On 211 rows of the default model's real logits
(bench/sampler_bench.py --logits) the first level decided every top_p 0.9 row at T 0.7 and 1, 89% of
top_p 0.95 rows at T 1 and half of them at T 1.3 (the rest at 2^-24), every top_k row; the whole row
(a full sort) never.

The draw is inverse-CDF with the row's uniform u in [0, 1): the first kept token, in token-id order, whose
float64 running weight exceeds u × (kept mass). An untruncated row does the same in two levels over a
(V / 768, 768) view of the row: column sums first, then within the chosen column (stride 768), which
is cheaper than a running sum over V. Every operation involves only this row and is elementwise or a
reduction over it, so a row's token never depends on the rest of the batch or on which level decided t.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

FloatRow = NDArray[np.float32]
IdArray = NDArray[np.int64]

CANDIDATE_LEVELS: tuple[float, ...] = (2.0**-12, 2.0**-24)  # weights relative to the top token
STRIPE = 768  # columns of the untruncated two-level draw (49152 = 64 × 768)
_MARGIN_BITS = 1.0 / 64  # logit-side candidate prefilter slack, far above exp2's rounding error


def draw_row(
    logits: FloatRow,
    row_max: np.float32,
    scale: np.float32,
    *,
    top_k: int,
    top_p: float,
    min_p: float,
    uniform: float,
    buffer: FloatRow,
    levels: tuple[float, ...] = CANDIDATE_LEVELS,
    total: float = math.nan,
) -> int:
    """One sampled row: logits (V,) with maximum row_max, scale = log2(e) / temperature, the draw u.
    `buffer` is (V,) float32 scratch space; `levels` as in draw_truncated; `total` the row's weight sum
    when known (the sampling head's), else NaN."""
    if not top_k and top_p >= 1.0 and min_p <= 0.0:
        return draw_untruncated(weights_into(logits, row_max, scale, buffer), uniform)
    if not top_k and top_p < 1.0 and levels and not math.isnan(total):  # only the candidates need weights
        return draw_truncated(
            FromLogits(logits, row_max, scale, buffer),
            uniform,
            top_k=0,
            top_p=top_p,
            min_p=min_p,
            total=total,
            levels=levels,
        )
    if not top_k and top_p < 1.0:  # top_p is measured against the whole row's mass
        weights = weights_into(logits, row_max, scale, buffer)
        total = float(stripe_sums(weights)[0].sum())
        return draw_truncated(
            FromWeights(weights), uniform, top_k=0, top_p=top_p, min_p=min_p, total=total, levels=levels
        )
    if top_k and levels:
        estimate = top_k_level(logits, row_max, scale, top_k)
        levels = (estimate, *(level for level in levels if level < estimate))
    return draw_truncated(
        FromLogits(logits, row_max, scale, buffer),
        uniform,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        total=math.nan,
        levels=levels,
    )


def weights_into(logits: FloatRow, row_max: np.float32, scale: np.float32, out: FloatRow) -> FloatRow:
    """out = 2^((logits - row_max) · scale), the row's weights (see the module docstring)."""
    np.subtract(logits, row_max, out=out)
    np.multiply(out, scale, out=out)
    return np.exp2(out, out=out)


# The per-row helpers below call ndarray methods (a.cumsum(), a.nonzero()) rather than the np.* wrappers:
# each wrapper costs ~1 µs of Python, and a row makes a few dozen such calls.


class Candidates(Protocol):
    def __call__(self, level: float) -> tuple[IdArray, FloatRow]:
        """Ids (ascending) and weights of every token with weight >= level; level 0: the whole row."""
        ...


class FromWeights:
    """Candidates of a row whose weights were all computed (rows that need the whole row's mass)."""

    def __init__(self, weights: FloatRow) -> None:
        self.weights = weights

    def __call__(self, level: float) -> tuple[IdArray, FloatRow]:
        if level == 0.0:
            return np.arange(self.weights.size, dtype=np.int64), self.weights
        ids = (self.weights >= level).nonzero()[0]
        return ids, self.weights.take(ids)


class FromLogits:
    """Candidates computed from the logits, weighing only tokens that pass a slightly lower logit bound
    (top_k and min_p rows never need the whole row's mass, so most of the row is never exponentiated)."""

    def __init__(self, logits: FloatRow, row_max: np.float32, scale: np.float32, buffer: FloatRow) -> None:
        self.logits, self.row_max, self.scale, self.buffer = logits, row_max, scale, buffer

    def __call__(self, level: float) -> tuple[IdArray, FloatRow]:
        if level == 0.0:
            weights = weights_into(self.logits, self.row_max, self.scale, self.buffer)
            return np.arange(weights.size, dtype=np.int64), weights
        # w >= level needs (x - max) · s >= log2(level) - (exp2's rounding): the margin keeps every such
        # token, and a relative slack covers the rounding of the bound itself to float32
        bound = float(self.row_max) + (math.log2(level) - _MARGIN_BITS) / float(self.scale)
        bound -= (abs(bound) + 1.0) * 2.0**-20
        ids = (self.logits >= bound).nonzero()[0]
        gathered = self.logits.take(ids)
        weights = weights_into(gathered, self.row_max, self.scale, gathered)
        keep = weights >= level
        return ids[keep], weights[keep]


def draw_untruncated(weights: FloatRow, uniform: float) -> int:
    """A token with probability weights[i] / sum(weights)."""
    groups, width, full = stripe_sums(weights)
    running = groups.cumsum()
    target = uniform * float(running[-1])
    group = _inverse_cdf(running, target)
    before = float(running[group - 1]) if group else 0.0
    # group < width: column `group` of the (full / width, width) view; else the leftover tail
    first, step, stop = (group, width, full) if group < width else (full, 1, weights.size)
    inner = weights[first:stop:step].astype(np.float64).cumsum()
    return first + step * _inverse_cdf(inner, target - before)


def draw_tail(
    logits: FloatRow,
    row_max: np.float32,
    scale: np.float32,
    excluded: IdArray,
    uniform: float,
    buffer: FloatRow,
) -> int:
    """A token other than `excluded`, with probability proportional to its weight (the draw of a row
    whose uniform landed beyond its candidates, see top.py)."""
    weights = weights_into(logits, row_max, scale, buffer)
    weights[excluded] = 0.0
    if not weights.any():  # the draw passed the candidates only by rounding and nothing else weighs
        return int(excluded[-1])
    return draw_untruncated(weights, uniform)


def stripe_sums(weights: FloatRow) -> tuple[NDArray[np.float64], int, int]:
    """Sums of the columns of weights[:full] seen as (full / width, width), plus one for the leftover
    tail when V is not a multiple of the width; with the width and `full`. The column sums run in
    float32 (64 terms each: relative error ~1e-6, a float64 reduction costs 3× more) and come back as
    float64 for the running sums."""
    width = min(STRIPE, weights.size)
    full = weights.size - weights.size % width
    sums = np.add.reduce(weights[:full].reshape(-1, width), axis=0).astype(np.float64)
    if full < weights.size:
        sums = np.append(sums, weights[full:].sum(dtype=np.float64))
    return sums, width, full


def top_k_level(logits: FloatRow, row_max: np.float32, scale: np.float32, top_k: int) -> float:
    """A candidate level that probably holds the top_k tokens and not many more, estimated from every
    32nd logit (draw_truncated verifies it and goes lower when it falls short)."""
    sample = logits[::32].copy()
    rank = min(sample.size, 2 * (top_k // 32) + 4)  # expect ~32 × rank >= 2 top_k + 128 candidates
    sample.partition(sample.size - rank)
    estimate = float(sample[sample.size - rank])
    return float(2.0 ** ((estimate - float(row_max)) * float(scale)))


def draw_truncated(
    candidates: Candidates,
    uniform: float,
    *,
    top_k: int,
    top_p: float,
    min_p: float,
    total: float,
    levels: tuple[float, ...] = CANDIDATE_LEVELS,
) -> int:
    """A token from those kept by top_k (0 = off), top_p (1 = off) and min_p (0 = off).

    `total` is the whole row's weight sum, needed only by top_p without top_k (nan otherwise).
    `levels` are the candidate levels tried (highest first) before the whole row; () forces the
    whole-row path.
    """
    for level in _levels(top_k, top_p, min_p, levels):
        ids, weights = candidates(level)
        ascending = weights.copy()
        ascending.sort()
        threshold = kept_threshold(ascending[::-1], top_k, top_p, min_p, total, level)
        if threshold is not None:
            if threshold > ascending[0]:  # else every candidate is kept
                kept = weights >= threshold
                ids, weights = ids[kept], weights[kept]
            running = weights.astype(np.float64).cumsum()
            return int(ids[_inverse_cdf(running, uniform * float(running[-1]))])
    raise AssertionError("the whole-row level always decides the threshold")  # pragma: no cover


def kept_threshold(
    descending: FloatRow | NDArray[np.float64],
    top_k: int,
    top_p: float,
    min_p: float,
    total: float,
    level: float,
    *,
    running: NDArray[np.float64] | None = None,
) -> float | None:
    """The weight threshold t of the kept set, or None when the candidates (all weights >= level, sorted
    in descending order; level 0 = the whole row) cannot decide it. `running`: the float64 running sums
    of `descending`, when the caller has them."""
    count = descending.size
    whole_row = level == 0.0
    below = -1.0  # a cut known to lie below this level: it cannot be the binding one if t >= level
    t_k, end = 0.0, count
    if top_k and top_k <= count:
        t_k = float(descending[top_k - 1])
        end = count - int(descending[::-1].searchsorted(descending[top_k - 1], "left"))
    elif top_k and not whole_row:  # the top-k set reaches below this level
        if top_p < 1.0:
            return None  # top_p is measured against the top-k set's mass, not all of it here
        t_k = below
    # (a whole row holding fewer than top_k tokens: top_k keeps them all)
    t_p = 0.0
    if top_p < 1.0:
        sums = descending[:end].astype(np.float64).cumsum() if running is None else running[:end]
        reference = float(sums[-1]) if top_k else total
        cut = int(sums.searchsorted(top_p * reference, "left"))
        # cut == end: the nucleus needs more mass than the candidates hold (or rounding at top_p ≈ 1)
        last = float(descending[end - 1]) if whole_row else below
        t_p = float(descending[cut]) if cut < end else last
    threshold = max(t_k, t_p, min_p)
    if not whole_row and threshold < level:
        return None
    return threshold


def _levels(top_k: int, top_p: float, min_p: float, levels: tuple[float, ...]) -> list[float]:
    """Candidate levels to try, highest first, ending with 0 (the whole row)."""
    if not levels:
        return [0.0]
    if min_p > 0.0 and not top_k and top_p >= 1.0:
        return [min_p, 0.0]  # min_p alone: the kept set is exactly {w >= min_p}
    return [*sorted({*levels, min_p} - {0.0}, reverse=True), 0.0]


def _inverse_cdf(running: NDArray[np.float64], target: float) -> int:
    """Index of the first running sum that exceeds target: never a zero weight (its running sum equals
    the previous one). A target rounded up to the end gives the last index with positive weight."""
    index = int(running.searchsorted(target, "right"))
    if index == running.size:
        index = int(np.diff(running, prepend=0.0).nonzero()[0][-1])
    return index
