"""Per-request sampling parameters: defaults, normalisation and validation, in one place.

The gRPC edge builds a `SamplingParams` from the fields the client set (an unset field keeps its default)
and calls `validated(vocab_size=...)` once; everything below relies on the result being in range.

Defaults follow OpenAI's chat API where it has the parameter (temperature 1, top_p 1, no penalties, no
bias, no logprobs) and switch off the parameters it lacks (top_k, min_p, repetition_penalty, min_tokens).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from service.errors import InvalidArgument

MAX_TEMPERATURE = 2.0
GREEDY_TEMPERATURE = 1e-5  # below this a temperature is treated as 0 (greedy): 1/T would overflow
PENALTY_BOUND = 2.0  # frequency and presence penalties lie in [-2, 2], as in OpenAI's API
LOGIT_BIAS_BOUND = 100.0
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256  # characters; the stream holds back at most this much text
SEED_MODULUS = 2**64  # seeds are int64 on the wire; a negative seed maps to its two's complement


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token of one request.

    temperature: 0 = greedy (argmax); otherwise logits are divided by it. In [0, 2], default 1.
    top_k: keep the k most likely tokens (and tokens tied with the k-th); >= 1, None = no limit (zero
        is rejected: on the wire zero must never mean unset).
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p; (0, 1], 1 = off.
    min_p: keep tokens whose probability is at least min_p × the top token's; [0, 1], 0 = off.
    repetition_penalty: llama.cpp / Hugging Face style, over prompt and generated tokens: a positive logit
        is divided by it, a negative one multiplied; > 0, 1 = off.
    frequency_penalty, presence_penalty: OpenAI style, over generated tokens only: the logit loses
        frequency_penalty × count + presence_penalty × (count > 0); [-2, 2], 0 = off.
    logit_bias: token id -> value added to its logit, each in [-100, 100].
    seed: makes sampling reproducible (same seed and parameters, same tokens); None = fresh entropy.
    logprobs: report the chosen token's log probability; top_logprobs (0..20) the most likely
        alternatives too. Both come from the model's raw distribution (see sampler.py).
    max_tokens: upper bound on generated tokens; None = until the context window ends. >= 1.
    min_tokens: end-of-sequence and stop token ids are suppressed until this many tokens exist.
    ignore_eos: never sample the model's end-of-sequence tokens (benchmarks); stop strings still apply.
    stop: strings that end generation; the matched one is not part of the output. Up to 16, non-empty.
    stop_token_ids: token ids that end generation, besides the model's end-of-sequence tokens.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    max_tokens: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0

    def validated(self, *, vocab_size: int) -> SamplingParams:
        """Return the normalised parameters, or raise InvalidArgument naming the first bad field."""
        _verify(self, vocab_size)
        return _normalised(self, vocab_size)


def _verify(params: SamplingParams, vocab_size: int) -> None:
    _check_range("temperature", params.temperature, 0.0, MAX_TEMPERATURE)
    if params.top_k is not None and params.top_k < 1:
        raise InvalidArgument("top_k", f"must be >= 1 (leave it unset for no limit), got {params.top_k}")
    _check_finite("top_p", params.top_p)
    if not 0.0 < params.top_p <= 1.0:
        raise InvalidArgument("top_p", f"must be in (0, 1], got {params.top_p}")
    _check_range("min_p", params.min_p, 0.0, 1.0)
    _check_finite("repetition_penalty", params.repetition_penalty)
    if params.repetition_penalty <= 0.0:
        raise InvalidArgument("repetition_penalty", f"must be > 0 (1 = off), got {params.repetition_penalty}")
    _check_range("frequency_penalty", params.frequency_penalty, -PENALTY_BOUND, PENALTY_BOUND)
    _check_range("presence_penalty", params.presence_penalty, -PENALTY_BOUND, PENALTY_BOUND)
    for token_id, bias in params.logit_bias.items():
        _check_token_id(f"logit_bias[{token_id}]", token_id, vocab_size)
        _check_range(f"logit_bias[{token_id}]", bias, -LOGIT_BIAS_BOUND, LOGIT_BIAS_BOUND)
    if params.seed is not None and not -(2**63) <= params.seed < 2**63:
        raise InvalidArgument("seed", f"must fit in a signed 64-bit integer, got {params.seed}")
    if not 0 <= params.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidArgument(
            "top_logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}], got {params.top_logprobs}"
        )
    if params.top_logprobs > 0 and not params.logprobs:
        raise InvalidArgument("top_logprobs", "requires logprobs to be true")
    if params.max_tokens is not None and params.max_tokens < 1:
        raise InvalidArgument("max_tokens", f"must be >= 1, got {params.max_tokens}")
    if params.min_tokens < 0:
        raise InvalidArgument("min_tokens", f"must be >= 0, got {params.min_tokens}")
    if params.max_tokens is not None and params.min_tokens > params.max_tokens:
        raise InvalidArgument(
            "min_tokens", f"must be <= max_tokens ({params.max_tokens}), got {params.min_tokens}"
        )
    if len(params.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(params.stop)}")
    for index, stop in enumerate(params.stop):
        if not stop:
            raise InvalidArgument(f"stop[{index}]", "must not be empty")
        if len(stop) > MAX_STOP_LENGTH:
            raise InvalidArgument(
                f"stop[{index}]", f"must be at most {MAX_STOP_LENGTH} characters, got {len(stop)}"
            )
    for index, token_id in enumerate(params.stop_token_ids):
        _check_token_id(f"stop_token_ids[{index}]", token_id, vocab_size)


def _normalised(params: SamplingParams, vocab_size: int) -> SamplingParams:
    temperature = 0.0 if params.temperature < GREEDY_TEMPERATURE else float(params.temperature)
    top_k = params.top_k if params.top_k is not None and params.top_k < vocab_size else None
    top_p, min_p = float(params.top_p), float(params.min_p)
    if temperature == 0.0:  # truncation cannot change the argmax: switch it off so no stage runs for it
        top_k, top_p, min_p = None, 1.0, 0.0
    return replace(
        params,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=float(params.repetition_penalty),
        frequency_penalty=float(params.frequency_penalty),
        presence_penalty=float(params.presence_penalty),
        logit_bias=MappingProxyType({int(k): float(v) for k, v in params.logit_bias.items() if v != 0.0}),
        seed=None if params.seed is None else params.seed % SEED_MODULUS,
        top_logprobs=int(params.top_logprobs),
        stop=tuple(dict.fromkeys(params.stop)),  # drop duplicates, keep the order
        stop_token_ids=tuple(dict.fromkeys(int(t) for t in params.stop_token_ids)),
    )


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise InvalidArgument(name, f"must be a finite number, got {value}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    _check_finite(name, value)
    if not low <= value <= high:
        raise InvalidArgument(name, f"must be in [{_fmt(low)}, {_fmt(high)}], got {value}")


def _check_token_id(name: str, token_id: int, vocab_size: int) -> None:
    if not 0 <= token_id < vocab_size:
        raise InvalidArgument(name, f"token id must be in [0, {vocab_size}), got {token_id}")


def _fmt(bound: float) -> str:
    return f"{bound:g}"
