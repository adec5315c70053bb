"""Per-sequence sampling state and the batch columns built from it: the bookkeeping around the pure sampler.

The engine keeps one `SequenceSampling` per running sequence. Each step it calls
`build_columns(sequences)` (which draws each sampled row's uniform from that sequence's own generator),
runs `sample(logits, columns)`, then `record_step(sequences, tokens)`. Nothing here is O(V) per step:
penalty history is a list of distinct tokens plus dense counts, updated in O(1) per token.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
from numpy.typing import NDArray

from service.sampling.columns import NO_LOGPROBS, IndexArray, SamplingColumns, TokenValues
from service.sampling.params import SamplingParams

_EMPTY_IDS: IndexArray = np.empty(0, np.int64)


class TokenHistory:
    """The distinct tokens of a sequence (prompt and generated) and how often each was generated."""

    def __init__(self, prompt_ids: Sequence[int] | IndexArray, vocab_size: int) -> None:
        distinct = np.unique(np.asarray(prompt_ids, dtype=np.int64))
        self._generated = np.zeros(vocab_size, np.float32)  # float32: used as-is by the penalties
        self._seen = np.zeros(vocab_size, np.bool_)
        self._seen[distinct] = True
        self._tokens = np.empty(max(64, 2 * distinct.size), np.int64)
        self._tokens[: distinct.size] = distinct
        self._size = int(distinct.size)

    def add(self, token: int) -> None:
        self._generated[token] += 1.0
        if self._seen[token]:
            return
        self._seen[token] = True
        if self._size == self._tokens.size:
            self._tokens = np.concatenate([self._tokens, np.empty_like(self._tokens)])
        self._tokens[self._size] = token
        self._size += 1

    @property
    def tokens(self) -> IndexArray:
        """Distinct tokens seen so far, in order of first appearance after the prompt's sorted ids."""
        return self._tokens[: self._size]

    @property
    def generated_counts(self) -> NDArray[np.float32]:
        """Times each of `tokens` was generated (0 for a token seen only in the prompt)."""
        return self._generated[self.tokens]


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
        vocab_size: int,
    ) -> None:
        self.params = params
        self.generator = np.random.default_rng(params.seed)  # seed None: fresh OS entropy
        self.generated = 0
        self.history = TokenHistory(prompt_ids, vocab_size) if params.needs_penalties else None
        self.column_values = (  # this sequence's row of the dense columns, in SamplingColumns order
            params.temperature,
            params.top_k or 0,
            params.top_p,
            params.min_p,
            params.repetition_penalty,
            params.frequency_penalty,
            params.presence_penalty,
            params.top_logprobs if params.logprobs else NO_LOGPROBS,
        )
        self.bias_tokens = np.fromiter(params.logit_bias.keys(), np.int64, len(params.logit_bias))
        self.bias_values = np.fromiter(params.logit_bias.values(), np.float32, len(params.logit_bias))
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
        if self.history is not None:
            self.history.add(token)


def build_columns(sequences: Sequence[SequenceSampling]) -> SamplingColumns:
    """The columns for one step over `sequences` (row i = sequences[i]); draws each sampled row's
    uniform. O(B) Python plus O(history + bias) numpy."""
    batch = len(sequences)
    table = np.array([s.column_values for s in sequences], dtype=np.float64).reshape(batch, 8)
    bias: list[tuple[int, IndexArray, NDArray[np.float32]]] = []
    history: list[tuple[int, IndexArray, NDArray[np.float32]]] = []
    suppressed: list[tuple[int, IndexArray, NDArray[np.float32]]] = []
    for row, sequence in enumerate(sequences):
        if sequence.bias_tokens.size:
            bias.append((row, sequence.bias_tokens, sequence.bias_values))
        if sequence.history is not None:
            tokens = sequence.history.tokens
            history.append((row, tokens, sequence.history.generated_counts))
        blocked = sequence.suppressed_now()
        if blocked.size:
            suppressed.append((row, blocked, np.zeros(blocked.size, np.float32)))  # values unused
    return SamplingColumns(
        temperature=table[:, 0:1].astype(np.float32),
        top_k=table[:, 1:2].astype(np.int64),
        top_p=table[:, 2:3].copy(),
        min_p=table[:, 3:4].astype(np.float32),
        repetition_penalty=table[:, 4:5].astype(np.float32),
        frequency_penalty=table[:, 5:6].astype(np.float32),
        presence_penalty=table[:, 6:7].astype(np.float32),
        top_logprobs=table[:, 7:8].astype(np.int64),
        uniform=np.array([s.draw() for s in sequences], np.float64).reshape(batch, 1),
        logit_bias=_sparse(bias),
        history=_sparse(history),
        suppressed=_sparse(suppressed),
    )


def record_step(sequences: Sequence[SequenceSampling], tokens: IndexArray) -> None:
    """Account the tokens just sampled (tokens[i] for sequences[i])."""
    for sequence, token in zip(sequences, tokens.tolist(), strict=True):
        sequence.record(token)


def _sparse(parts: list[tuple[int, IndexArray, NDArray[np.float32]]]) -> TokenValues:
    """One TokenValues from per-row (row, tokens, values) parts."""
    if not parts:
        return TokenValues.empty()
    rows = np.array([row for row, _, _ in parts], np.int64)
    sizes = np.array([tokens.size for _, tokens, _ in parts], np.int64)
    return TokenValues(
        rows=rows.repeat(sizes),
        tokens=np.concatenate([tokens for _, tokens, _ in parts]),
        values=np.concatenate([values for _, _, values in parts]),
    )
