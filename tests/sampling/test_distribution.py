"""The sampler draws from the right distribution: empirical frequencies over many seeded draws of one
fixed row match the filtered softmax (reference.filtered_softmax) by a chi-square test at 1e-6, and no
draw ever lands on a token the filters remove. Each case runs on the logits alone and with a sampling
head (service/sampling/top.py; few candidates on small rows, so that tail draws and fallbacks to the
whole row are common)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from service.sampling import (
    SamplingColumns,
    SamplingParams,
    SequenceSampling,
    build_columns,
    record_step,
    sample,
)
from service.sampling.top import TopTokens
from tests.sampling.columns import TokenValues, make_columns
from tests.sampling.reference import assert_fits, filtered_softmax, reference_top_tokens, zipf_logits

DRAWS = 8000


def _small_row() -> NDArray[np.float32]:
    """24 tokens, well separated in probability so that no cut falls near a rounding boundary."""
    jitter = np.random.default_rng(7).uniform(-0.15, 0.15, 24)
    return (np.linspace(3.0, -3.0, 24) + jitter).astype(np.float32)[np.random.default_rng(8).permutation(24)]


HEADS = [pytest.param(None, id="logits"), pytest.param(8, id="head")]


def _head_of_repeated_row(logits: NDArray[np.float32], columns: SamplingColumns, k: int) -> TopTokens:
    """The sampling head of a batch whose rows and parameters are all the same (draws apart)."""
    assert (columns.head_scales == columns.head_scales[0]).all()
    one = reference_top_tokens(logits[:1], columns.select([0]).head, k)
    rows = logits.shape[0]
    return TopTokens(
        columns.head,
        np.repeat(one.ids, rows, axis=0),
        np.repeat(one.logits, rows, axis=0),
        np.repeat(one.masses, rows, axis=0),
    )


def _draw_counts(
    row: NDArray[np.float32], draws: int, seed: int, head: int | None = None, **params: Any
) -> NDArray[np.int64]:
    """Sample the same row `draws` times, each with its own uniform, in batches; with a sampling head
    of `head` candidates per row when given."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(row.size, np.int64)
    chunk = 2000
    for start in range(0, draws, chunk):
        batch = min(chunk, draws - start)
        logits = np.broadcast_to(row, (batch, row.size))
        columns = make_columns(batch, uniform=rng.random(batch), **params)
        top = None if head is None else _head_of_repeated_row(logits, columns, head)
        counts += np.bincount(sample(logits, columns, top=top).tokens, minlength=row.size)
    return counts


SMALL_CASES = [
    pytest.param({"temperature": 1.0}, id="temperature-1"),
    pytest.param({"temperature": 0.5}, id="temperature-0.5"),
    pytest.param({"temperature": 1.7}, id="temperature-1.7"),
    pytest.param({"temperature": 1.0, "top_k": 5}, id="top_k-5"),
    pytest.param({"temperature": 1.0, "top_p": 0.8}, id="top_p-0.8"),
    pytest.param({"temperature": 1.0, "min_p": 0.1}, id="min_p-0.1"),
    pytest.param({"temperature": 0.8, "top_k": 10, "top_p": 0.7}, id="top_k-and-top_p"),
    pytest.param({"temperature": 1.3, "top_k": 12, "top_p": 0.9, "min_p": 0.05}, id="all-filters"),
]


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("params", SMALL_CASES)
def test_small_vocabulary_frequencies_match_filtered_softmax(
    params: dict[str, Any], head: int | None
) -> None:
    row = _small_row()
    expected = filtered_softmax(row, **params)
    _assert_no_cut_near_a_boundary(row, params)
    assert_fits(_draw_counts(row, DRAWS, seed=1, head=head, **params), expected)


LARGE_CASES = [
    pytest.param({"temperature": 1.0}, id="untruncated"),
    pytest.param({"temperature": 0.7, "top_k": 30}, id="top_k-30"),
    pytest.param({"temperature": 1.0, "top_p": 0.9}, id="top_p-0.9"),
    pytest.param({"temperature": 1.2, "min_p": 0.02}, id="min_p-0.02"),
    pytest.param({"temperature": 0.9, "top_k": 50, "top_p": 0.95}, id="top_k-and-top_p"),
]


@pytest.mark.parametrize("head", [pytest.param(None, id="logits"), pytest.param(64, id="head")])
@pytest.mark.parametrize("params", LARGE_CASES)
def test_full_vocabulary_frequencies_match_filtered_softmax(params: dict[str, Any], head: int | None) -> None:
    """49152 tokens shaped like real logits: the candidate-set paths are the ones exercised (the head's
    64, as served)."""
    row = zipf_logits(np.random.default_rng(3), 1, 49152)[0]
    assert_fits(_draw_counts(row, 4000, seed=2, head=head, **params), filtered_softmax(row, **params))


def test_goodness_of_fit_check_rejects_a_wrong_temperature() -> None:
    """The check has the power to fail: draws at temperature 1 do not pass for temperature 0.8."""
    row = _small_row()
    counts = _draw_counts(row, DRAWS, seed=1, temperature=1.0)
    with pytest.raises(AssertionError, match="chi-square"):
        assert_fits(counts, filtered_softmax(row, temperature=0.8))


def test_goodness_of_fit_check_rejects_draws_outside_the_kept_set() -> None:
    row = _small_row()
    counts = _draw_counts(row, DRAWS, seed=1, temperature=1.0, top_k=6)
    with pytest.raises(AssertionError, match="filters remove"):
        assert_fits(counts, filtered_softmax(row, temperature=1.0, top_k=5))


@pytest.mark.parametrize("head", HEADS)
def test_penalties_bias_and_suppression_shape_the_distribution(head: int | None) -> None:
    """Through the per-sequence state: logit_bias, then repetition (prompt + generated), frequency and
    presence (generated) penalties, then min_tokens suppression of the end token (with a head: edits
    merged into the raw candidates, the mass corrected by their change)."""
    row = _small_row()
    vocab = row.size
    params = SamplingParams(
        temperature=1.1,
        repetition_penalty=1.3,
        frequency_penalty=0.4,
        presence_penalty=0.6,
        logit_bias={3: 2.0, 7: -1.5, 11: 0.5},
        min_tokens=10,
    ).validated(vocab_size=vocab)
    prompt, generated, end_token = [1, 2, 3, 4], [2, 5, 5, 9, 9, 9], 0
    sequences = []
    for seed in range(DRAWS):
        sequence = SequenceSampling(
            params.__class__(**{**params.__dict__, "seed": seed}),
            prompt_ids=prompt,
            end_token_ids=[end_token],
        )
        for token in generated:
            sequence.record(token)
        sequences.append(sequence)
    columns = build_columns(sequences)
    logits = np.broadcast_to(row, (DRAWS, vocab))
    top = None if head is None else _head_of_repeated_row(logits, columns, head)
    tokens = sample(logits, columns, top=top).tokens
    record_step(sequences, tokens)

    expected_logits = row.astype(np.float64)
    for token, bias in params.logit_bias.items():
        expected_logits[token] += bias
    counts = np.bincount(generated, minlength=vocab)
    for token in set(prompt) | set(generated):
        value = expected_logits[token]
        value = value / 1.3 if value > 0 else value * 1.3
        expected_logits[token] = value - 0.4 * counts[token] - 0.6 * (counts[token] > 0)
    expected_logits[end_token] = -np.inf
    expected = filtered_softmax(expected_logits, temperature=1.1)
    assert_fits(np.bincount(tokens, minlength=vocab), expected)
    assert all(sequence.generated == len(generated) + 1 for sequence in sequences)


def _assert_no_cut_near_a_boundary(row: NDArray[np.float32], params: dict[str, Any]) -> None:
    """float32 and float64 agree on the kept set only away from ties: check the case is well posed."""
    top_p = params.get("top_p", 1.0)
    if top_p < 1.0:
        kept = filtered_softmax(row, **{**params, "top_p": 1.0})
        running = np.cumsum(np.sort(kept)[::-1])
        assert np.abs(running - top_p).min() > 1e-3, "top_p sits on a cumulative boundary"


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_edits_that_remove_nearly_all_the_mass(head: int | None, top_p: float) -> None:
    """A dominant token (99.9% of the mass) suppressed: the head's raw mass less its weight would be
    imprecise, so the row is summed whole; the draws still follow the edited distribution."""
    row = _small_row()
    dominant = int(row.argmax())
    row[dominant] += 9.0
    rng = np.random.default_rng(4)
    logits = np.broadcast_to(row, (DRAWS, row.size))
    rows = np.arange(DRAWS)
    suppressed = TokenValues(rows, np.full(DRAWS, dominant), np.zeros(DRAWS, np.float32))
    columns = make_columns(DRAWS, uniform=rng.random(DRAWS), top_p=top_p, suppressed=suppressed)
    top = None if head is None else _head_of_repeated_row(logits, columns, head)
    tokens = sample(logits, columns, top=top).tokens
    edited = row.astype(np.float64)
    edited[dominant] = -np.inf
    assert_fits(
        np.bincount(tokens, minlength=row.size), filtered_softmax(edited, temperature=1.0, top_p=top_p)
    )
