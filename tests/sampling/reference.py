"""Straightforward reference implementations the sampler is checked against, and a goodness-of-fit check.

`filtered_softmax` is the textbook definition in float64 (Hugging Face's warpers: temperature, top_k,
top_p, min_p, each keeping ties at its cut). `reference_token` re-derives the sampler's exact float32
arithmetic with a full sort of the row: it is what the fast candidate path must reproduce bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from service.sampling.columns import HeadInputs, TokenEdits
from service.sampling.top import TopTokens

LOG2E = 1.0 / math.log(2.0)


def filtered_softmax(
    logits: NDArray[np.floating],
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
) -> NDArray[np.float64]:
    """The distribution a row should be sampled from, in float64."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    keep = np.ones(p.size, bool)
    if top_k:
        keep &= p >= np.sort(p)[::-1][top_k - 1]
    if top_p < 1.0:
        q = np.where(keep, p, 0.0) / p[keep].sum()
        descending = np.sort(q)[::-1]
        cut = int(np.searchsorted(np.cumsum(descending), top_p))
        keep &= q >= descending[min(cut, p.size - 1)]
    if min_p:
        keep &= p >= min_p * p.max()
    kept: NDArray[np.float64] = np.where(keep, p, 0.0)
    kept /= kept.sum()
    return kept


def reference_token(
    logits: NDArray[np.float32],
    uniform: float,
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
) -> int:
    """The token the sampler must return for a truncated row, from a full sort (no candidate sets)."""
    top = logits.max()
    weights = np.exp2((logits - top) * np.float32(LOG2E / temperature))
    descending = np.sort(weights)[::-1]
    threshold = 0.0
    mass_end = weights.size
    if top_k:
        threshold = float(descending[top_k - 1])
        mass_end = int(np.count_nonzero(weights >= threshold))
    if top_p < 1.0:
        running = np.cumsum(descending[:mass_end], dtype=np.float64)
        reference = running[-1] if top_k else float(_stripe_total(weights))
        cut = min(int(np.searchsorted(running, top_p * reference, side="left")), mass_end - 1)
        threshold = max(threshold, float(descending[cut]))
    threshold = max(threshold, min_p)
    ids = np.flatnonzero(weights >= threshold)
    running = np.cumsum(weights[ids], dtype=np.float64)
    index = int(np.searchsorted(running, uniform * running[-1], side="right"))
    return int(ids[min(index, ids.size - 1)])


def _stripe_total(weights: NDArray[np.float32]) -> float:
    """The whole row's mass as the sampler sums it (float32 column sums of a (V/768, 768) view)."""
    width = min(768, weights.size)
    full = weights.size - weights.size % width
    sums = np.add.reduce(weights[:full].reshape(-1, width), axis=0).astype(np.float64)
    if full < weights.size:
        sums = np.append(sums, weights[full:].sum(dtype=np.float64))
    return float(sums.sum())


def zipf_logits(rng: np.random.Generator, rows: int, vocab: int) -> NDArray[np.float32]:
    """Logits shaped like a language model's: the r-th most likely token sits about slope · ln(r) below
    the top (slope 1.4-2.4 nats, as measured on the default model), in a random token order."""
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    out = np.empty((rows, vocab), np.float32)
    for row in range(rows):
        slope = rng.uniform(1.4, 2.4)
        values = 20.0 - slope * np.log(ranks) + rng.normal(0.0, 0.3, vocab)
        values[1:] -= rng.uniform(0.0, 3.0)  # how far the top token stands out
        out[row, rng.permutation(vocab)] = values
    return out


def assert_fits(counts: NDArray[np.int64], expected: NDArray[np.float64]) -> None:
    """Draw counts match the expected probabilities: no draw where the probability is 0, and a
    chi-square test at significance 1e-6 (bins with an expected count under 5 pooled)."""
    draws = int(counts.sum())
    outside = int(counts[expected == 0.0].sum())
    assert outside == 0, f"{outside} draws of tokens the filters remove"
    means = expected * draws
    big = means >= 5.0
    observed = np.append(counts[big], counts[~big].sum())
    predicted = np.append(means[big], means[~big].sum())
    if predicted[-1] < 5.0:  # too little pooled mass to test: fold it into the largest bin
        observed, predicted = observed[:-1].copy(), predicted[:-1].copy()
        largest = int(np.argmax(predicted))
        observed[largest] += counts[~big].sum()
        predicted[largest] += means[~big].sum()
    statistic = float(((observed - predicted) ** 2 / predicted).sum())
    freedom = observed.size - 1
    assert statistic < _chi_square_quantile(freedom), (
        f"chi-square {statistic:.1f} with {freedom} degrees of freedom (critical "
        f"{_chi_square_quantile(freedom):.1f}); observed {observed.tolist()} expected "
        f"{np.round(predicted, 1).tolist()}"
    )


def _chi_square_quantile(freedom: int, z: float = 4.753) -> float:
    """Upper 1e-6 quantile of chi-square (Wilson-Hilferty; z is the normal quantile)."""
    if freedom <= 0:
        return math.inf
    a = 2.0 / (9.0 * freedom)
    return freedom * (1.0 - a + z * math.sqrt(a)) ** 3


def reference_edited(logits: NDArray[np.float32], edits: TokenEdits) -> NDArray[np.float32]:
    """The logits after steps 1-3, entry by entry in float32 scalars (columns.TokenEdits' definition)."""
    edited = logits.copy()
    entries = zip(edits.rows.tolist(), edits.tokens.tolist(), edits.factors.tolist(), strict=True)
    for row, token, (bias, divisor, subtract) in entries:
        value = logits[row, token] + np.float32(bias)
        value = value / np.float32(divisor) if value > 0.0 else value * np.float32(divisor)
        edited[row, token] = value - np.float32(subtract)
    return edited


def reference_top_tokens(logits: NDArray[np.float32], inputs: HeadInputs, k: int) -> TopTokens:
    """What the graph's SamplingHead returns (see service/sampling/top.py), by a full sort per row."""
    rows, scales = logits.shape[0], inputs.scales
    ids = np.full((rows, k), -1, np.int64)
    top = np.full((rows, k), -np.inf, np.float32)
    masses = np.zeros((rows, 2), np.float64)
    edited = reference_edited(logits, inputs.edits)
    for row in range(rows):
        x = edited[row]
        if np.isnan(x).any() or np.isposinf(x).any() or not np.isfinite(x).any():
            masses[row] = np.nan
        finite = np.flatnonzero(x > -np.inf)
        order = finite[np.lexsort((finite, -x[finite]))][:k]  # logit descending, id ascending
        ids[row, : order.size], top[row, : order.size] = order, x[order]
        if np.isnan(masses[row, 0]):
            continue
        shifted = (x - x.max()).astype(np.float64)
        for column in range(2):
            if scales[row, column] > 0.0:
                masses[row, column] = float(np.exp(shifted * float(scales[row, column])).sum())
    return TopTokens(inputs, ids, top, masses)
