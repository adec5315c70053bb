"""Per-sequence sampling state and the batch columns built from it: the bookkeeping around the pure sampler.

The engine keeps one `SequenceSampling` per running sequence. Each step it calls
`build_columns(sequences)` (which draws each sampled row's uniform from that sequence's own generator),
runs `sample(logits, columns)`, then `record_step(sequences, tokens)`. Nothing here is O(V) per step:
a sequence's logit_bias and penalties are entries (SequenceEdits) that a generated token updates in O(1).
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
    TokenValues,
)
from service.sampling.params import SamplingParams

_EMPTY_IDS: IndexArray = np.empty(0, np.int64)


class SequenceEdits:
    """One sequence's TokenEdits entries (columns.py), kept up to date as it generates: the distinct
    tokens of its history (prompt and generated, when a penalty is on) and of its logit_bias, each with
    its bias, divisor and subtract. A generated token updates one entry or appends one, in O(1)."""

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int] | IndexArray) -> None:
        self._penalised = params.needs_penalties
        self._repetition = params.repetition_penalty
        self._frequency, self._presence = params.frequency_penalty, params.presence_penalty
        history = np.unique(np.asarray(prompt_ids, np.int64)) if self._penalised else _EMPTY_IDS
        bias = params.logit_bias
        seen = set(history.tolist())
        tokens = [*history.tolist(), *(token for token in sorted(bias) if token not in seen)]
        self._position = {token: i for i, token in enumerate(tokens)}
        self.size = len(tokens)
        capacity = max(64, 2 * self.size)
        self._tokens = np.zeros(capacity, np.int64)
        self._bias = np.zeros(capacity, np.float32)
        self._divisor = np.ones(capacity, np.float32)
        self._subtract = np.zeros(capacity, np.float32)
        self._counts = np.zeros(capacity, np.int64)  # times generated
        self._tokens[: self.size] = tokens
        self._bias[: self.size] = [bias.get(token, 0.0) for token in tokens]
        self._divisor[: history.size] = self._repetition

    def add(self, token: int) -> None:
        """Account a generated token (a no-op without penalties: the bias entries never change)."""
        if not self._penalised:
            return
        entry = self._position.get(token)
        if entry is None:
            entry = self._append(token)
        count = int(self._counts[entry]) + 1
        self._counts[entry] = count
        self._divisor[entry] = self._repetition  # a bias-only token is now in the history too
        self._subtract[entry] = self._frequency * count + self._presence

    def _append(self, token: int) -> int:
        if self.size == self._tokens.size:
            for name in ("_tokens", "_bias", "_divisor", "_subtract", "_counts"):
                array = getattr(self, name)
                grown = np.zeros(2 * array.size, array.dtype)
                grown[: array.size] = array
                setattr(self, name, grown)
        entry = self.size
        self._tokens[entry], self._bias[entry], self._divisor[entry] = token, 0.0, 1.0
        self._subtract[entry] = self._counts[entry] = 0
        self._position[token] = entry
        self.size += 1
        return entry

    @property
    def tokens(self) -> IndexArray:
        return self._tokens[: self.size]

    @property
    def arrays(self) -> tuple[IndexArray, NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """(tokens, bias, divisor, subtract) of the entries."""
        n = self.size
        return self._tokens[:n], self._bias[:n], self._divisor[:n], self._subtract[:n]

    @property
    def generated_counts(self) -> IndexArray:
        """Times each of `tokens` was generated."""
        return self._counts[: self.size]


class SequenceSampling:
    """What one sequence needs for sampling: its validated params, its generator, tokens generated so
    far, its penalty history (only when a penalty is on) and the token ids it may not emit yet.

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
        self.edits = (
            SequenceEdits(params, prompt_ids) if params.needs_penalties or params.logit_bias else None
        )
        self.column_values = (  # this sequence's row of the dense columns, in RowParameters order
            params.temperature,
            params.top_k or 0,
            params.top_p,
            params.min_p,
            params.top_logprobs if params.logprobs else NO_LOGPROBS,
        )
        ends = set(end_token_ids)
        self._always_suppressed = np.array(sorted(ends), np.int64) if params.ignore_eos else _EMPTY_IDS
        self._early_suppressed = np.array(sorted({*ends, *params.stop_token_ids}), np.int64)

    def suppressed_now(self) -> IndexArray:
        """Token ids this sequence may not emit at its next step."""
        if self.generated < self.params.min_tokens:
            return self._early_suppressed  # a superset of the ignore_eos set
        return self._always_suppressed

    def draw(self) -> float:
        """The next uniform in [0, 1) for a sampled step; greedy steps consume none."""
        return 0.0 if self.params.greedy else float(self.generator.random())

    def record(self, token: int) -> None:
        self.generated += 1
        if self.edits is not None:
            self.edits.add(token)


def build_columns(sequences: Sequence[SequenceSampling]) -> SamplingColumns:
    """The columns for one step over `sequences` (row i = sequences[i]); draws each sampled row's
    uniform. O(B) Python plus O(entries) numpy; the dense parameters are reused while the batch's
    sequences stay the same."""
    edited: list[tuple[int, SequenceEdits]] = []
    suppressed: list[tuple[int, IndexArray]] = []
    for row, sequence in enumerate(sequences):
        if sequence.edits is not None and sequence.edits.size:
            edited.append((row, sequence.edits))
        blocked = sequence.suppressed_now()
        if blocked.size:
            suppressed.append((row, blocked))
    return SamplingColumns(
        parameters=_parameters(tuple(sequences)),
        uniform=np.array([s.draw() for s in sequences], np.float64).reshape(len(sequences), 1),
        edits=_edits(edited),
        suppressed=_suppressed(suppressed),
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
    arrays = [edits.arrays for _, edits in parts]
    sizes = [edits.size for _, edits in parts]
    return TokenEdits(
        np.repeat(np.array([row for row, _ in parts], np.int64), sizes),
        *(np.concatenate([entry[field] for entry in arrays]) for field in range(4)),
    )


def _suppressed(parts: list[tuple[int, IndexArray]]) -> TokenValues:
    if not parts:
        return TokenValues.empty()
    rows = np.repeat(np.array([row for row, _ in parts], np.int64), [tokens.size for _, tokens in parts])
    return TokenValues(rows, np.concatenate([tokens for _, tokens in parts]), np.zeros(rows.size, np.float32))
