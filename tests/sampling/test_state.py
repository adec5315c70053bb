"""Per-sequence sampling state: penalty history, the batch columns, suppression and seeded draws."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from service.sampling import (
    SamplingParams,
    SequenceEdits,
    SequenceSampling,
    build_columns,
    record_step,
    sample,
)
from service.sampling.columns import NO_LOGPROBS
from tests.sampling.reference import zipf_logits

VOCAB = 2048
END = 2  # the model's end-of-sequence token in these tests


def _sequence(params: SamplingParams, prompt: list[int] | None = None) -> SequenceSampling:
    return SequenceSampling(
        params.validated(vocab_size=VOCAB),
        prompt_ids=prompt if prompt is not None else [5, 6, 7],
        end_token_ids=[END],
    )


def test_edits_track_distinct_tokens_counts_bias_and_penalties() -> None:
    params = SamplingParams(
        temperature=1.0,
        repetition_penalty=1.5,
        frequency_penalty=0.25,
        presence_penalty=0.5,
        logit_bias={7: 2.0, 4: -1.0},
    )
    edits = SequenceEdits(params, [9, 4, 9, 1])
    for token in [4, 300, 300, 7, 1000, *range(500, 700)]:  # grows past its first capacity
        edits.add(token)
    tokens = edits.tokens.tolist()
    bias, divisor, subtract = edits.factors.T.tolist()
    assert tokens == [1, 4, 9, 7, 300, 1000, *range(500, 700)]  # the prompt's, bias-only, then generated
    entry = {
        token: (b, d, s, c)
        for token, b, d, s, c in zip(
            tokens, bias, divisor, subtract, edits.generated_counts.tolist(), strict=True
        )
    }
    assert entry[1] == (0.0, 1.5, 0.0, 0)  # prompt only: repetition, no frequency or presence
    assert entry[4] == (-1.0, 1.5, 0.75, 1)
    assert entry[7] == (2.0, 1.5, 0.75, 1)  # a bias-only token joins the history once generated
    assert entry[300] == (0.0, 1.5, 1.0, 2)
    assert entry[650] == (0.0, 1.5, 0.75, 1)


def test_edits_without_penalties_hold_the_bias_only() -> None:
    edits = SequenceEdits(SamplingParams(temperature=1.0, logit_bias={7: 2.0}), [9, 4])
    edits.add(7)
    assert edits.tokens.tolist() == [7] and edits.factors.tolist() == [[2.0, 1.0, 0.0]]


def test_suppression_is_a_bias_of_minus_infinity_until_allowed() -> None:
    params = SamplingParams(temperature=1.0, repetition_penalty=2.0, logit_bias={3: 1.5, 8: -1.0})
    edits = SequenceEdits(params, [3, 5], suppressed=[3, 4])
    entry = dict(zip(edits.tokens.tolist(), edits.factors.tolist(), strict=True))
    assert entry == {
        3: [-np.inf, 2.0, 0.0],  # in the prompt, biased and suppressed: suppressed wins
        5: [0.0, 2.0, 0.0],
        4: [-np.inf, 1.0, 0.0],
        8: [-1.0, 1.0, 0.0],
    }
    edits.allow([3, 4])
    entry = dict(zip(edits.tokens.tolist(), edits.factors.tolist(), strict=True))
    assert entry[3] == [1.5, 2.0, 0.0] and entry[4] == [0.0, 1.0, 0.0]  # their own bias back


def test_a_row_edited_only_by_suppression_is_unedited_after_min_tokens() -> None:
    sequence = _sequence(SamplingParams(min_tokens=1))
    assert build_columns([sequence]).edits.tokens.tolist() == [END]
    sequence.record(100)
    assert sequence.edits is None and len(build_columns([sequence]).edits) == 0


def test_columns_hold_each_row_and_neutral_values() -> None:
    plain = _sequence(SamplingParams(temperature=0.0))
    tuned = _sequence(
        SamplingParams(
            temperature=0.7,
            top_k=40,
            top_p=0.9,
            min_p=0.05,
            repetition_penalty=1.2,
            frequency_penalty=0.5,
            presence_penalty=-0.5,
            logit_bias={11: 3.0},
            logprobs=True,
            top_logprobs=4,
            seed=1,
        )
    )
    columns = build_columns([plain, tuned])
    assert columns.temperature[:, 0].tolist() == pytest.approx([0.0, 0.7])
    assert columns.top_k[:, 0].tolist() == [0, 40]
    assert columns.top_p[:, 0].tolist() == pytest.approx([1.0, 0.9])
    assert columns.min_p[:, 0].tolist() == pytest.approx([0.0, 0.05])
    assert columns.top_logprobs[:, 0].tolist() == [NO_LOGPROBS, 4]
    edits = columns.edits  # the prompt's distinct tokens and the biased one, penalised row only
    assert edits.rows.tolist() == [1, 1, 1, 1] and edits.tokens.tolist() == [5, 6, 7, 11]
    assert edits.bias.tolist() == [0.0, 0.0, 0.0, 3.0] and edits.divisor.tolist() == pytest.approx(
        [1.2] * 3 + [1.0]
    )
    assert edits.subtract.tolist() == [0.0] * 4
    assert not np.isneginf(edits.bias).any()  # nothing suppressed
    assert columns.uniform[0, 0] == 0.0 and 0.0 < columns.uniform[1, 0] < 1.0


def test_greedy_rows_consume_no_draws_and_sampled_rows_one_each() -> None:
    greedy, sampled = _sequence(SamplingParams(temperature=0.0)), _sequence(SamplingParams(seed=3))
    before = greedy.generator.bit_generator.state, sampled.generator.bit_generator.state
    build_columns([greedy, sampled])
    assert greedy.generator.bit_generator.state == before[0]
    expected = np.random.default_rng(3)
    expected.random()
    assert sampled.generator.bit_generator.state == expected.bit_generator.state


@pytest.mark.parametrize(
    ("params", "suppressed_at_step"),
    [
        pytest.param(SamplingParams(), [[]] * 4, id="nothing"),
        pytest.param(
            SamplingParams(min_tokens=2, stop_token_ids=(9,)), [[END, 9], [END, 9], [], []], id="min"
        ),
        pytest.param(SamplingParams(ignore_eos=True), [[END]] * 4, id="ignore_eos"),
        pytest.param(
            SamplingParams(ignore_eos=True, min_tokens=1, stop_token_ids=(9,)),
            [[END, 9], [END], [END], [END]],
            id="both",
        ),
    ],
)
def test_end_tokens_are_suppressed_until_min_tokens_or_always_with_ignore_eos(
    params: SamplingParams, suppressed_at_step: list[list[int]]
) -> None:
    sequence = _sequence(params)
    for expected in suppressed_at_step:
        edits = build_columns([sequence]).edits
        assert sorted(edits.tokens[np.isneginf(edits.bias)].tolist()) == expected
        sequence.record(100)


def test_suppressed_end_token_is_never_sampled_even_when_most_likely() -> None:
    logits = np.zeros((1, VOCAB), np.float32)
    logits[0, END] = 30.0
    sequence = _sequence(SamplingParams(temperature=0.0, min_tokens=3))
    tokens = []
    for _ in range(4):
        token = sample(logits, build_columns([sequence])).tokens
        record_step([sequence], token)
        tokens.append(int(token[0]))
    assert END not in tokens[:3] and tokens[3] == END


def _model(key: int, history: list[int]) -> NDArray[np.float32]:
    """A deterministic stand-in for the model: the next logits depend on the sequence and its tokens."""
    seed = [key, len(history), history[-1] if history else 0]
    row: NDArray[np.float32] = zipf_logits(np.random.default_rng(seed), 1, VOCAB)[0]
    return row


MIX = [
    SamplingParams(temperature=0.8, top_p=0.9, seed=42),
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=1.2, top_k=20, repetition_penalty=1.3, seed=7),
    SamplingParams(temperature=1.0, min_p=0.1, frequency_penalty=1.0, seed=99, logit_bias={3: 5.0}),
    SamplingParams(temperature=1.0),  # unseeded
]


def _run(schedule: list[list[int]], steps: int) -> dict[int, list[int]]:
    """Decode `steps` steps; schedule[step] lists the sequence keys in the batch, in row order."""
    sequences = {key: _sequence(MIX[key]) for key in range(len(MIX))}
    generated: dict[int, list[int]] = {key: [] for key in sequences}
    for step in range(steps):
        keys = schedule[step]
        batch = [sequences[key] for key in keys]
        logits = np.stack([_model(key, generated[key]) for key in keys])
        tokens = sample(logits, build_columns(batch)).tokens
        record_step(batch, tokens)
        for key, token in zip(keys, tokens.tolist(), strict=True):
            generated[key].append(token)
    return generated


def test_seeded_sequences_get_the_same_tokens_alone_and_in_a_changing_batch() -> None:
    steps = 12
    alone = {key: _run([[key]] * steps, steps)[key] for key in (0, 1, 2, 3)}
    rng = np.random.default_rng(0)
    schedule = []
    for step in range(steps):
        keys = [0, 1, 2, 3] + ([4] if 3 <= step < 8 else [])  # the unseeded one joins, then leaves
        schedule.append([int(k) for k in rng.permutation(keys)])  # and rows move around
    together = _run(schedule, steps)
    for key in (0, 1, 2, 3):
        assert together[key] == alone[key], f"sequence {key}"


def test_a_different_seed_gives_different_tokens() -> None:
    logits = np.zeros((1, VOCAB), np.float32)  # uniform over the vocabulary
    runs = []
    for seed in (1, 1, 2):
        sequence = _sequence(SamplingParams(seed=seed))
        runs.append([int(sample(logits, build_columns([sequence])).tokens[0]) for _ in range(8)])
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_columns_follow_the_batch_when_its_sequences_change() -> None:
    """The dense parameters are kept while the batch's sequences stay the same, and only then."""
    cold, warm = (
        _sequence(SamplingParams(temperature=0.2)),
        _sequence(SamplingParams(temperature=1.5, top_k=7)),
    )
    first = build_columns([cold, warm])
    assert build_columns([cold, warm]).parameters is first.parameters
    swapped = build_columns([warm, cold])
    assert swapped.temperature[:, 0].tolist() == pytest.approx([1.5, 0.2])
    assert swapped.top_k[:, 0].tolist() == [7, 0]
    assert build_columns([warm]).head_scales.tolist() == [[0.0, 0.0]]  # top_k: no whole-row mass needed
