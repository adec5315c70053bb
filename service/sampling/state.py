"""Per-sequence sampling state and the batch columns built from it: the bookkeeping around the pure sampler.

The engine keeps one `SequenceSampling` per running sequence. Each step it calls
`build_columns(sequences)` (which draws each sampled row's uniform from that sequence's own generator),
runs `sample(logits, columns)`, then `record_step(sequences, tokens)`. Nothing here is O(V) per step:
a sequence's logit_bias, penalties and suppressed tokens are entries (SequenceEdits) that a generated
token updates in O(1).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from service.sampling.columns import (
    NO_LOGPROBS,
    IndexArray,
    RowParameters,
    SamplingColumns,
    TokenEdits,
)
from service.sampling.params import SamplingParams

_EMPTY_IDS: IndexArray = np.empty(0, np.int64)


class SequenceEdits:
    """One sequence's TokenEdits entries (columns.py), kept up to date as it generates: the distinct
    tokens of its history (prompt and generated, when a penalty is on), of its logit_bias and those it
    may not emit (bias -inf), each with its bias, divisor and subtract. A generated token updates one
    entry or appends one, in O(1)."""

    def __init__(
        self,
        params: SamplingParams,
        prompt_ids: Sequence[int] | IndexArray,
        suppressed: Collection[int] = (),
    ) -> None:
        self._penalised = params.needs_penalties
        self._repetition = params.repetition_penalty
        self._frequency, self._presence = params.frequency_penalty, params.presence_penalty
        self._logit_bias = params.logit_bias
        history = np.unique(np.asarray(prompt_ids, np.int64)) if self._penalised else _EMPTY_IDS
        seen = set(history.tolist())
        tokens = [*history.tolist(), *sorted({*self._logit_bias, *suppressed} - seen)]
        self._position = {token: i for i, token in enumerate(tokens)}
        self.size = len(tokens)
        capacity = max(64, 2 * self.size)
        self._tokens = np.zeros(capacity, np.int64)
        self._factors = np.zeros((capacity, 3), np.float32)  # bias, divisor, subtract
        self._factors[:, 1] = 1.0
        self._counts = np.zeros(capacity, np.int64)  # times generated
        self._tokens[: self.size] = tokens
        blocked = set(suppressed)
        self._factors[: self.size, 0] = [
            -np.inf if token in blocked else self._logit_bias.get(token, 0.0) for token in tokens
        ]
        self._factors[: history.size, 1] = self._repetition

    def add(self, token: int) -> None:
        """Account a generated token (a no-op without penalties: the bias entries never change)."""
        if not self._penalised:
            return
        entry = self._position.get(token)
        if entry is None:
            entry = self._append(token)
        count = int(self._counts[entry]) + 1
        self._counts[entry] = count
        # divisor: a token that had only a bias or a suppression is now in the history too
        self._factors[entry, 1:] = self._repetition, self._frequency * count + self._presence

    def allow(self, tokens: Collection[int]) -> None:
        """End the suppression of `tokens` (entries of this sequence): they get their logit_bias back."""
        for token in tokens:
            self._factors[self._position[token], 0] = self._logit_bias.get(token, 0.0)

    def _append(self, token: int) -> int:
        if self.size == self._tokens.size:
            for name in ("_tokens", "_factors", "_counts"):
                array = getattr(self, name)
                grown = np.zeros((2 * array.shape[0], *array.shape[1:]), array.dtype)
                grown[: array.shape[0]] = array
                setattr(self, name, grown)
        entry = self.size
        self._tokens[entry], self._counts[entry] = token, 0
        self._factors[entry] = 0.0, 1.0, 0.0
        self._position[token] = entry
        self.size += 1
        return entry

    @property
    def tokens(self) -> IndexArray:
        return self._tokens[: self.size]

    @property
    def factors(self) -> NDArray[np.float32]:
        """(size, 3): each entry's bias, divisor and subtract."""
        return self._factors[: self.size]

    @property
    def generated_counts(self) -> IndexArray:
        """Times each of `tokens` was generated."""
        return self._counts[: self.size]


class SequenceSampling:
    """What one sequence needs for sampling: its validated params, its generator, tokens generated so
    far and its edits (SequenceEdits: bias, penalty history and the token ids it may not emit yet;
    None when it has none).

    `end_token_ids` are the model's end-of-sequence tokens (the model card's stop token ids): never
    sampled under ignore_eos; with the request's stop_token_ids, not sampled before min_tokens.
    """

    def __init__(
        self,
        params: SamplingParams,
        *,
        prompt_ids: Sequence[int] | IndexArray,
        end_token_ids: Collection[int],
    ) -> None:
        self.params = params
        self.generator = np.random.default_rng(params.seed)  # seed None: fresh OS entropy
        self.generated = 0
        ends = set(end_token_ids)
        always = ends if params.ignore_eos else set()
        # suppressed until min_tokens tokens exist
        self._until_min_tokens = sorted({*ends, *params.stop_token_ids} - always) if params.min_tokens else []
        suppressed = {*always, *self._until_min_tokens}
        self._only_suppression = not (params.needs_penalties or params.logit_bias or always)
        self.edits = (
            SequenceEdits(params, prompt_ids, suppressed)
            if params.needs_penalties or params.logit_bias or suppressed
            else None
        )
        self.column_values = (  # this sequence's row of the dense columns, in RowParameters order
            params.temperature,
            params.top_k or 0,
            params.top_p,
            params.min_p,
            params.top_logprobs if params.logprobs else NO_LOGPROBS,
        )

    def draw(self) -> float:
        """The next uniform in [0, 1) for a sampled step; greedy steps consume none."""
        return 0.0 if self.params.greedy else float(self.generator.random())

    def record(self, token: int) -> None:
        self.generated += 1
        if self.edits is None:
            return
        self.edits.add(token)
        if self.generated == self.params.min_tokens and self._until_min_tokens:
            if self._only_suppression:  # nothing is left to edit: the row is no longer edited at all
                self.edits = None
            else:
                self.edits.allow(self._until_min_tokens)


def build_columns(sequences: Sequence[SequenceSampling]) -> SamplingColumns:
    """The columns for one step over `sequences` (row i = sequences[i]); draws each sampled row's
    uniform. O(B) Python plus O(entries) numpy; the dense parameters are reused while the batch's
    sequences stay the same."""
    edited = [
        (row, sequence.edits)
        for row, sequence in enumerate(sequences)
        if sequence.edits is not None and sequence.edits.size
    ]
    return SamplingColumns(
        parameters=_parameters(tuple(sequences)),
        uniform=np.array([s.draw() for s in sequences], np.float64).reshape(len(sequences), 1),
        edits=_edits(edited),
    )


@lru_cache(maxsize=1)  # a batch keeps its sequences for many steps (held here until the next batch)
def _parameters(sequences: tuple[SequenceSampling, ...]) -> RowParameters:
    table = np.array([s.column_values for s in sequences], dtype=np.float64).reshape(len(sequences), 5)
    return RowParameters(
        temperature=table[:, 0:1].astype(np.float32),
        top_k=table[:, 1:2].astype(np.int64),
        top_p=table[:, 2:3].copy(),
        min_p=table[:, 3:4].astype(np.float32),
        top_logprobs=table[:, 4:5].astype(np.int64),
    )


def record_step(sequences: Sequence[SequenceSampling], tokens: IndexArray) -> None:
    """Account the tokens just sampled (tokens[i] for sequences[i])."""
    for sequence, token in zip(sequences, tokens.tolist(), strict=True):
        sequence.record(token)


def _edits(parts: list[tuple[int, SequenceEdits]]) -> TokenEdits:
    if not parts:
        return TokenEdits.empty()
    return TokenEdits(
        np.repeat(np.array([row for row, _ in parts], np.int64), [edits.size for _, edits in parts]),
        np.concatenate([edits.tokens for _, edits in parts]),
        np.concatenate([edits.factors for _, edits in parts]),
    )
