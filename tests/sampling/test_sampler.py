"""The pure sampler: greedy, exactness of the fast paths against slower ones and a full-sort reference,
logprobs, edits and failures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from service.sampling import NonFiniteLogits, SampledTokens, SamplingColumns, sample
from service.sampling.draw import STRIPE, draw_untruncated, weights_into
from tests.sampling.columns import TokenValues, make_columns
from tests.sampling.reference import LOG2E, reference_token, reference_top_tokens, zipf_logits

VOCAB = 49152


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return zipf_logits(np.random.default_rng(11), 24, VOCAB)


HEADS = [pytest.param(None, id="logits"), pytest.param(64, id="head"), pytest.param(4, id="head-4")]


def _sample(logits: np.ndarray, columns: SamplingColumns, head: int | None) -> SampledTokens:
    """sample() on the logits alone, or with the sampling head of `head` candidates (at most V)."""
    if head is None:
        return sample(logits, columns)
    top = reference_top_tokens(logits, columns.head, min(head, logits.shape[1]))
    return sample(logits, columns, top=top)


def _uniforms(seed: int, count: int) -> NDArray[np.float64]:
    return np.random.default_rng(seed).random((count,))


def _ids(pairs: np.ndarray) -> TokenValues:
    """(row, token) pairs as the two rows of `pairs`, without values."""
    rows, tokens = np.asarray(pairs[0], np.int64), np.asarray(pairs[1], np.int64)
    return TokenValues(rows, tokens, np.zeros(rows.size, np.float32))


@pytest.mark.parametrize("head", HEADS)
def test_greedy_is_argmax_with_the_lowest_id_on_ties(rows: np.ndarray, head: int | None) -> None:
    logits = rows[:4].copy()
    logits[2, [5, 9]] = logits[2].max() + 1.0  # a tie between ids 5 and 9
    tokens = _sample(logits, make_columns(4, temperature=0.0), head).tokens
    assert tokens.tolist() == [*logits[:2].argmax(axis=1).tolist(), 5, int(logits[3].argmax())]


def test_all_greedy_fast_path_equals_greedy_rows_of_a_mixed_batch(rows: np.ndarray) -> None:
    fast = sample(rows[:6], make_columns(6, temperature=0.0)).tokens
    mixed = sample(
        rows[:6],
        make_columns(6, temperature=[0.0, 0.9, 0.0, 0.0, 1.3, 0.0], uniform=np.full(6, 0.5)),
    ).tokens
    assert mixed[[0, 2, 3, 5]].tolist() == fast[[0, 2, 3, 5]].tolist()


def test_neutral_edits_change_nothing(rows: np.ndarray) -> None:
    """A row whose bias is 0 and whose penalties are neutral goes through the edit path (a copy) and
    must give the same tokens as no edits at all."""
    batch = 8
    uniform = _uniforms(5, batch)
    token_ids = np.tile(np.arange(0, 2000, 7), batch)
    row_ids = np.repeat(np.arange(batch), token_ids.size // batch)
    neutral = TokenValues(row_ids, token_ids, np.zeros(token_ids.size, np.float32))
    plain = make_columns(batch, temperature=0.9, top_k=50, top_p=0.9, uniform=uniform)
    edited = make_columns(
        batch, temperature=0.9, top_k=50, top_p=0.9, uniform=uniform, logit_bias=neutral, history=neutral
    )
    assert sample(rows[:batch], edited).tokens.tolist() == sample(rows[:batch], plain).tokens.tolist()


# one row per kind of truncation, repeated: (temperature, top_k, top_p, min_p)
MIXED: list[tuple[float, int, float, float]] = [
    (0.7, 0, 0.9, 0.0),
    (1.0, 40, 0.95, 0.0),
    (1.3, 0, 0.5, 0.05),
    (0.5, 5, 1.0, 0.0),
    (1.0, 0, 0.99, 0.001),
    (0.9, 200, 1.0, 0.1),
    (1.8, 0, 0.8, 0.0),
    (1.0, 1000, 0.7, 0.0),
] * 3


def _mixed_columns(order: list[int], uniform: np.ndarray) -> SamplingColumns:
    chosen = [MIXED[i] for i in order]
    return make_columns(
        len(order),
        temperature=[c[0] for c in chosen],
        top_k=[c[1] for c in chosen],
        top_p=[c[2] for c in chosen],
        min_p=[c[3] for c in chosen],
        uniform=uniform,
    )


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["draws-0", "draws-1", "draws-2"])
def test_candidate_path_equals_whole_row_path_and_full_sort_reference(rows: np.ndarray, seed: int) -> None:
    uniform = _uniforms(seed, rows.shape[0])
    columns = _mixed_columns(list(range(rows.shape[0])), uniform)
    fast = sample(rows, columns).tokens
    whole_row = sample(rows, columns, levels=()).tokens
    assert fast.tolist() == whole_row.tolist()
    reference = [
        reference_token(rows[i], float(uniform[i]), temperature=t, top_k=k, top_p=p, min_p=m)
        for i, (t, k, p, m) in enumerate(MIXED)
    ]
    assert fast.tolist() == reference


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    vocab=st.sampled_from([2, 17, 768, 1000, 5000]),
    temperature=st.floats(0.05, 2.0),
    top_k=st.integers(0, 60),
    top_p=st.floats(0.05, 1.0),
    min_p=st.sampled_from([0.0, 0.0, 0.01, 0.2]),
    uniform=st.floats(0.0, 1.0, exclude_max=True),
)
def test_any_parameters_agree_with_the_full_sort_reference(
    seed: int, vocab: int, temperature: float, top_k: int, top_p: float, min_p: float, uniform: float
) -> None:
    row = zipf_logits(np.random.default_rng(seed), 1, vocab)
    if seed % 3 == 0:  # coarse logits: many exact ties
        row = np.round(row)
    top_k = top_k if top_k < vocab else 0
    columns = make_columns(
        1, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, uniform=np.array([uniform])
    )
    token = int(sample(row, columns).tokens[0])
    assert token == int(sample(row, columns, levels=()).tokens[0])
    if top_k or top_p < 1.0 or min_p > 0.0:
        expected = reference_token(
            row[0], uniform, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p
        )
        assert token == expected


def test_untruncated_draw_is_the_inverse_cdf_in_stripe_order(rows: np.ndarray) -> None:
    """Untruncated rows invert the CDF over tokens in column order of the (V/768, 768) view; a float64
    running sum over that order must pick the same token."""
    row = rows[0]
    weights = weights_into(row, row.max(), np.float32(LOG2E / 1.0), np.empty(VOCAB, np.float32))
    order = np.arange(VOCAB).reshape(-1, STRIPE).T.ravel()
    running = np.cumsum(weights[order], dtype=np.float64)
    for uniform in np.random.default_rng(4).random(500):
        expected = int(order[np.searchsorted(running, uniform * running[-1], side="right")])
        assert draw_untruncated(weights, float(uniform)) == expected


def test_a_vocabulary_that_is_not_a_multiple_of_the_stripe_reaches_its_tail() -> None:
    vocab = STRIPE * 2 + 5
    logits = np.full(vocab, -200.0, np.float32)  # weight 2^-302: 0 in float32
    logits[-3:] = 10.0  # all the mass in the leftover tail
    weights = weights_into(logits, logits.max(), np.float32(LOG2E), np.empty(vocab, np.float32))
    drawn = {draw_untruncated(weights, u) for u in (0.0, 0.2, 0.5, 0.8, 0.999999)}
    assert drawn == {vocab - 3, vocab - 2, vocab - 1}


@pytest.mark.parametrize("head", HEADS)
def test_same_row_and_draw_give_the_same_token_in_any_batch(rows: np.ndarray, head: int | None) -> None:
    uniform = _uniforms(9, rows.shape[0])
    together = _sample(rows, _mixed_columns(list(range(rows.shape[0])), uniform), head).tokens
    order = np.random.default_rng(10).permutation(rows.shape[0])
    permuted = _sample(rows[order], _mixed_columns(order.tolist(), uniform[order]), head).tokens
    assert permuted.tolist() == together[order].tolist()
    for i in (0, 7, 13):
        alone = _sample(rows[i : i + 1], _mixed_columns([i], uniform[i : i + 1]), head).tokens
        assert int(alone[0]) == int(together[i])


@pytest.mark.parametrize("head", HEADS)
def test_logprobs_come_from_the_raw_distribution(rows: np.ndarray, head: int | None) -> None:
    logits = rows[:4].copy()
    logits[1, [100, 50]] = logits[1].max() + 2.0  # tied top tokens: listed by ascending id
    columns = make_columns(
        4,
        temperature=[0.0, 0.5, 1.0, 1.0],
        top_k=[0, 3, 0, 0],
        uniform=np.array([0.0, 0.3, 0.6, 0.2]),
        top_logprobs=[5, 2, -1, 0],
        logit_bias=TokenValues(np.array([0]), np.array([7]), np.array([50.0], np.float32)),
    )
    result = _sample(logits, columns, head)
    assert result.tokens[0] == 7  # the bias made it the argmax ...
    assert result.logprobs[2] is None
    for row in (0, 1, 3):
        raw = logits[row].astype(np.float64)
        log_softmax = raw - raw.max() - math.log(np.exp(raw - raw.max()).sum())
        entry = result.logprobs[row]
        assert entry is not None
        # ... but logprobs describe the model's own distribution, before the bias
        assert entry.logprob == pytest.approx(log_softmax[result.tokens[row]], abs=1e-4)
        expected_ids = sorted(range(VOCAB), key=lambda i: (-raw[i], i))[: len(entry.top_ids)]
        assert list(entry.top_ids) == expected_ids
        assert entry.top_logprobs == pytest.approx(log_softmax[expected_ids].tolist(), abs=1e-4)
    assert result.logprobs[1] is not None and result.logprobs[1].top_ids == (50, 100)
    assert result.logprobs[3] is not None and result.logprobs[3].top_ids == ()


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
@pytest.mark.parametrize("head", HEADS)
def test_non_finite_rows_are_all_reported(rows: np.ndarray, temperature: float, head: int | None) -> None:
    logits = rows[:4].copy()
    logits[1, 123] = np.nan
    logits[3, 7] = np.inf
    columns = make_columns(4, temperature=[0.0, temperature, 1.0, temperature], uniform=np.full(4, 0.5))
    with pytest.raises(NonFiniteLogits, match=r"batch rows \[1, 3\]") as caught:
        _sample(logits, columns, head)
    assert caught.value.rows == [1, 3]


@pytest.mark.parametrize("head", HEADS)
def test_selected_columns_keep_each_rows_draw_and_edits(rows: np.ndarray, head: int | None) -> None:
    """A retry without failed rows samples the others exactly as the whole batch would have."""
    batch = 6
    edits = TokenValues(np.array([0, 2, 2, 5]), np.array([10, 11, 12, 13]), np.full(4, 3.0, np.float32))
    columns = make_columns(
        batch,
        temperature=[0.0, 0.8, 1.0, 0.0, 1.2, 0.9],
        top_k=[0, 0, 30, 0, 0, 5],
        uniform=_uniforms(3, batch),
        logit_bias=edits,
        history=edits,
        suppressed=_ids(np.array([[4], [int(rows[4].argmax())]])),
        repetition_penalty=1.5,
    )
    whole = _sample(rows[:batch], columns, head).tokens
    keep = [0, 2, 4, 5]
    assert _sample(rows[keep], columns.select(keep), head).tokens.tolist() == whole[keep].tolist()


@pytest.mark.parametrize("head", HEADS)
def test_all_suppressed_fails_with_non_finite_logits(head: int | None) -> None:
    logits = np.zeros((2, 3), np.float32)
    suppressed = _ids(np.array([[1, 1, 1], [0, 1, 2]]))
    with pytest.raises(NonFiniteLogits, match=r"batch rows \[1\]"):
        _sample(logits, make_columns(2, temperature=0.0, suppressed=suppressed), head)


@pytest.mark.parametrize("head", HEADS)
def test_suppressed_tokens_are_never_drawn(head: int | None) -> None:
    logits = np.array([[5.0, 4.0, 0.0, -1.0]] * 200, np.float32)
    rows = np.repeat(np.arange(200), 2)
    suppressed = _ids(np.array([rows, np.tile([0, 3], 200)]))
    columns = make_columns(200, uniform=np.random.default_rng(1).random(200), suppressed=suppressed)
    assert set(_sample(logits, columns, head).tokens.tolist()) == {1, 2}


@pytest.mark.parametrize("head", HEADS)
def test_penalties_follow_their_definitions(head: int | None) -> None:
    """Greedy picks that flip exactly when each penalty is applied as specified."""
    logits = np.array([[2.0, 1.9, -1.0, -1.05]], np.float32)
    history = TokenValues(np.array([0, 0]), np.array([0, 2]), np.array([0.0, 0.0], np.float32))
    # repetition 1.1: 2.0 -> 1.818 (divided, positive) falls below 1.9
    assert (
        _sample(
            logits, make_columns(1, temperature=0.0, history=history, repetition_penalty=1.1), head
        ).tokens[0]
        == 1
    )
    # negative logits are multiplied: -1.0 -> -1.1 falls below -1.05
    only_negative = logits.copy()
    only_negative[0, :2] = -5.0
    assert (
        _sample(
            only_negative, make_columns(1, temperature=0.0, history=history, repetition_penalty=1.1), head
        ).tokens[0]
        == 3
    )
    # frequency and presence use generated counts only: count 0 (a prompt token) changes nothing
    prompt_only = make_columns(
        1, temperature=0.0, history=history, frequency_penalty=2.0, presence_penalty=2.0
    )
    assert _sample(logits, prompt_only, head).tokens[0] == 0
    generated_twice = TokenValues(np.array([0]), np.array([0]), np.array([2.0], np.float32))
    for frequency, presence, expected in [(0.04, 0.0, 0), (0.06, 0.0, 1), (0.0, 0.09, 0), (0.0, 0.11, 1)]:
        # 2.0 - frequency × 2 - presence against 1.9
        columns = make_columns(
            1,
            temperature=0.0,
            history=generated_twice,
            frequency_penalty=frequency,
            presence_penalty=presence,
        )
        assert _sample(logits, columns, head).tokens[0] == expected, (frequency, presence)


@pytest.mark.parametrize("head", HEADS)
def test_penalties_apply_to_the_biased_logit(head: int | None) -> None:
    """Bias comes first: the repetition penalty divides the biased value (1 + 1) / 2 = 1.0 > 0.9,
    where penalising the raw logit would give 0.5 < 0.9."""
    logits = np.array([[1.0, 0.9, -3.0]], np.float32)
    bias = TokenValues(np.array([0]), np.array([0]), np.array([1.0], np.float32))
    history = TokenValues(np.array([0]), np.array([0]), np.array([0.0], np.float32))
    columns = make_columns(1, temperature=0.0, logit_bias=bias, history=history, repetition_penalty=2.0)
    assert _sample(logits, columns, head).tokens[0] == 0


def test_sparse_entries_may_come_in_any_row_order() -> None:
    logits = np.zeros((3, 5), np.float32)
    bias = TokenValues(np.array([2, 0, 1, 0]), np.array([4, 1, 3, 2]), np.array([5, 1, 5, 5], np.float32))
    assert sample(logits, make_columns(3, temperature=0.0, logit_bias=bias)).tokens.tolist() == [2, 3, 4]
