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

With the decode graph's sampling head (`top`, see top.py) steps 1-3 run in the graph and the rest on
each edited row's 64 most likely tokens and its softmax normaliser instead of its 49152 logits; a row
reads its logits only when a cut or a draw reaches past those candidates.

The draws come from each request's own seeded generator (see state.py), and every step works on one row
(or its candidates) alone, so a seeded request gets the same tokens whatever else is in the batch and in
whatever row order.

Logprobs are those of the model's raw distribution, log_softmax(logits) before any of the steps above,
as OpenAI reports them and vLLM does by default: they say how likely the model found the token, not how
the request's sampling settings reshaped it (greedy rows would otherwise report 0 for every token).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from service.errors import EngineFailure
from service.sampling.columns import (
    NO_LOGPROBS,
    FloatArray,
    IndexArray,
    SampledTokens,
    SamplingColumns,
    TokenLogprobs,
)
from service.sampling.draw import CANDIDATE_LEVELS, draw_row, draw_tail, stripe_sums, weights_into
from service.sampling.edits import EditedRows
from service.sampling.top import (
    CandidateDraws,
    TailDraw,
    TopTokens,
    logprobs_from_top,
)

LOG2E = 1.0 / math.log(2.0)


class NonFiniteLogits(EngineFailure):
    """The model produced rows with NaN or +inf, or rows with every token suppressed. `rows` lists all
    of them; `SamplingColumns.select` keeps the others' draws for a retry without them."""

    def __init__(self, rows: list[int]) -> None:
        super().__init__(f"logits of batch rows {rows} have no finite maximum (NaN, +inf or all -inf)")
        self.rows = rows


def sample(
    logits: FloatArray,
    columns: SamplingColumns,
    *,
    top: TopTokens | None = None,
    levels: tuple[float, ...] = CANDIDATE_LEVELS,
) -> SampledTokens:
    """Pick one token per row of logits (B, V) float32. `logits` is not modified.

    `top` is the graph's sampling head for these logits, computed for columns.head (see top.py):
    rows it can decide never read their whole row. `levels` are draw.py's candidate levels; () sends
    every truncated row through the whole-row path.
    """
    if logits.ndim != 2 or logits.shape[0] != columns.batch_size:
        raise ValueError(f"logits must be (B={columns.batch_size}, V), got {logits.shape}")
    if top is not None and top.inputs is not columns.head:
        raise ValueError("the sampling head ran for other columns than these (SamplingColumns.head)")
    edited = EditedRows(logits, columns.edits)
    if top is None and not len(columns.edits) and not columns.parameters.any_sampled:  # greedy, unedited
        tokens = logits.argmax(axis=1).astype(np.int64)
        _check_finite(logits[np.arange(tokens.size), tokens])
    else:
        tokens = _sample_rows(edited, columns, levels, top)
    if not columns.parameters.any_logprobs:
        return SampledTokens(tokens, (None,) * columns.batch_size)
    return SampledTokens(tokens, logprobs_of(logits, tokens, columns.top_logprobs, top, edited.edited_rows))


def _sample_rows(
    edited: EditedRows, columns: SamplingColumns, levels: tuple[float, ...], top: TopTokens | None
) -> IndexArray:
    """Steps 4-8, row by row: each row's work is a few passes over V (or over its K candidates), so the
    loop costs little."""
    batch, vocab = edited.logits.shape
    tokens = np.empty(batch, np.int64)
    buffer: FloatArray | None = None  # one row's weights, reused (stays in cache); made when first needed
    parameters = zip(
        columns.temperature[:, 0].tolist(),
        columns.top_k[:, 0].tolist(),
        columns.top_p[:, 0].tolist(),
        columns.min_p[:, 0].tolist(),
        columns.uniform[:, 0].tolist(),
        strict=True,
    )
    failed: list[int] = []
    if top is not None:
        candidates = CandidateDraws(top, columns)
        finite = (~np.isnan(top.masses[:, 0]) & np.isfinite(top.logits[:, 0])).tolist()
    for row, (temperature, top_k, top_p, min_p, uniform) in enumerate(parameters):
        tail: TailDraw | None = None
        if top is not None:
            if not finite[row]:  # no finite maximum in the edited row
                failed.append(row)
                continue
            drawn: int | TailDraw | None
            if temperature == 0.0:
                drawn = candidates.greedy[row]
            else:
                drawn = candidates.draw(row, top_k=top_k, top_p=top_p, min_p=min_p, uniform=uniform)
            if isinstance(drawn, int):
                tokens[row] = drawn
                continue
            tail = drawn  # else None: the candidates could not decide; the whole row does
        logits = edited[row]
        if buffer is None:
            buffer = np.empty(vocab, np.float32)
        if temperature == 0.0:
            tokens[row] = logits.argmax()
            if not math.isfinite(logits[tokens[row]]):
                failed.append(row)
            continue
        row_max = logits.max() if top is None else top.logits[row, 0]  # the head's is the edited row's
        if not math.isfinite(row_max):
            failed.append(row)
            continue
        scale = np.float32(LOG2E / temperature)
        if tail is not None:
            tokens[row] = draw_tail(logits, row_max, scale, tail.excluded, tail.uniform, buffer)
            continue
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
            total=math.nan if top is None else candidates.masses[row],
        )
    if failed:
        raise NonFiniteLogits(failed)
    return tokens


def _check_finite(row_maxima: FloatArray) -> None:
    bad = ~np.isfinite(row_maxima)
    if bad.any():
        raise NonFiniteLogits(np.flatnonzero(bad).tolist())


def logprobs_of(
    logits: FloatArray,
    tokens: IndexArray,
    top_logprobs: IndexArray,
    top: TopTokens | None = None,
    edited_rows: NDArray[np.bool_] | None = None,
) -> tuple[TokenLogprobs | None, ...]:
    """Raw log_softmax of the chosen tokens and of each row's `top_logprobs` most likely tokens (from
    the sampling head's normaliser and candidates for the rows it saw unedited: not `edited_rows`)."""
    wanted = top_logprobs[:, 0]
    if (wanted == NO_LOGPROBS).all():
        return (None,) * int(logits.shape[0])
    results: list[TokenLogprobs | None] = []
    buffer: FloatArray | None = None
    for row, count in enumerate(wanted.tolist()):
        if count == NO_LOGPROBS:
            results.append(None)
        elif top is not None and not (edited_rows is not None and edited_rows[row]) and top.holds(row, count):
            results.append(logprobs_from_top(top, row, float(logits[row, tokens[row]]), count))
        else:
            buffer = np.empty(logits.shape[1], np.float32) if buffer is None else buffer
            results.append(_row_logprobs(logits[row], int(tokens[row]), count, buffer))
    return tuple(results)


def _row_logprobs(logits: FloatArray, token: int, count: int, buffer: FloatArray) -> TokenLogprobs:
    top = logits.max()
    weights = weights_into(logits, top, np.float32(LOG2E), buffer)
    log_normaliser = float(top) + math.log(float(stripe_sums(weights)[0].sum()))
    top_ids: tuple[int, ...] = ()
    if count:
        for margin in (4.0, 8.0, 16.0, 32.0, math.inf):  # logits near the top, until there are enough
            ids = (logits >= float(top) - margin).nonzero()[0]
            if ids.size >= count:
                break
        values = logits.take(ids)
        if ids.size > count:  # keep the `count` largest and anything tied with the last of them
            kth = np.partition(values, ids.size - count)[ids.size - count]
            keep = values >= kth
            ids, values = ids[keep], values[keep]
        order = np.argsort(-values, kind="stable")[:count]  # descending; ids ascend among ties
        top_ids = tuple(ids.take(order).tolist())
    return TokenLogprobs(
        logprob=float(logits[token]) - log_normaliser,
        top_ids=top_ids,
        top_logprobs=tuple(float(logits[i]) - log_normaliser for i in top_ids),
    )
