"""SamplingParams: defaults, validation messages that name the field, range and value, normalisation."""

from __future__ import annotations

import math
from typing import Any

import pytest

from service.errors import InvalidArgument
from service.sampling import SamplingParams

VOCAB = 49152


def test_defaults_are_openai_like_and_valid() -> None:
    params = SamplingParams().validated(vocab_size=VOCAB)
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (1.0, 1.0, None, 0.0)
    assert (params.frequency_penalty, params.presence_penalty, params.repetition_penalty) == (0.0, 0.0, 1.0)
    assert not params.greedy and not params.needs_penalties
    assert params.seed is None and params.max_tokens is None and params.stop == ()


INVALID = [
    pytest.param({"temperature": 2.5}, "temperature", r"must be in \[0, 2\], got 2.5", id="temp-high"),
    pytest.param({"temperature": -0.1}, "temperature", r"must be in \[0, 2\], got -0.1", id="temp-neg"),
    pytest.param({"temperature": math.nan}, "temperature", "must be a finite number, got nan", id="temp-nan"),
    pytest.param({"top_p": 1.5}, "top_p", r"must be in \(0, 1\], got 1.5", id="top_p-high"),
    pytest.param({"top_p": 0.0}, "top_p", r"must be in \(0, 1\], got 0.0", id="top_p-zero"),
    pytest.param({"top_p": math.inf}, "top_p", "must be a finite number, got inf", id="top_p-inf"),
    pytest.param({"top_k": -1}, "top_k", "must be >= 1 .* got -1", id="top_k-negative"),
    pytest.param(
        {"top_k": 0}, "top_k", r"must be >= 1 \(leave it unset for no limit\), got 0", id="top_k-zero"
    ),
    pytest.param({"min_p": 1.2}, "min_p", r"must be in \[0, 1\], got 1.2", id="min_p-high"),
    pytest.param({"repetition_penalty": 0.0}, "repetition_penalty", "must be > 0", id="repetition-zero"),
    pytest.param({"repetition_penalty": -math.inf}, "repetition_penalty", "finite", id="repetition-inf"),
    pytest.param({"frequency_penalty": 2.5}, "frequency_penalty", r"\[-2, 2\], got 2.5", id="frequency"),
    pytest.param({"presence_penalty": -3.0}, "presence_penalty", r"\[-2, 2\], got -3.0", id="presence"),
    pytest.param({"logit_bias": {VOCAB: 1.0}}, f"logit_bias[{VOCAB}]", r"\[0, 49152\)", id="bias-id"),
    pytest.param({"logit_bias": {5: 150.0}}, "logit_bias[5]", r"\[-100, 100\], got 150", id="bias-value"),
    pytest.param({"logit_bias": {5: math.nan}}, "logit_bias[5]", "finite", id="bias-nan"),
    pytest.param({"seed": 2**63}, "seed", "signed 64-bit", id="seed-too-large"),
    pytest.param({"logprobs": True, "top_logprobs": 21}, "top_logprobs", r"\[0, 20\], got 21", id="top-21"),
    pytest.param({"top_logprobs": 3}, "top_logprobs", "requires logprobs", id="top-without-logprobs"),
    pytest.param({"max_tokens": 0}, "max_tokens", ">= 1, got 0", id="max_tokens-zero"),
    pytest.param({"min_tokens": -1}, "min_tokens", ">= 0, got -1", id="min_tokens-negative"),
    pytest.param({"max_tokens": 5, "min_tokens": 6}, "min_tokens", r"<= max_tokens \(5\)", id="min-over-max"),
    pytest.param({"stop": ("ok", "")}, "stop[1]", "must not be empty", id="stop-empty"),
    pytest.param({"stop": ("x" * 257,)}, "stop[0]", "at most 256 characters", id="stop-long"),
    pytest.param({"stop": tuple(str(i) for i in range(17))}, "stop", "at most 16", id="stop-many"),
    pytest.param({"stop_token_ids": (1, -1)}, "stop_token_ids[1]", "got -1", id="stop-token-id"),
]


@pytest.mark.parametrize(("fields", "field", "message"), INVALID)
def test_invalid_values_are_rejected_with_the_field_named(
    fields: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as caught:
        SamplingParams(**fields).validated(vocab_size=VOCAB)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_message_reads_like_the_style_guide() -> None:
    with pytest.raises(InvalidArgument) as caught:
        SamplingParams(top_p=1.5).validated(vocab_size=VOCAB)
    assert str(caught.value) == "top_p: must be in (0, 1], got 1.5"


NORMALISED = [
    pytest.param(
        {"temperature": 1e-7, "top_k": 5, "top_p": 0.5},
        {"temperature": 0.0, "top_k": None, "top_p": 1.0},
        id="tiny-temperature-is-greedy",
    ),
    pytest.param({"top_k": VOCAB}, {"top_k": None}, id="top_k-vocab-is-off"),
    pytest.param({"seed": -1}, {"seed": 2**64 - 1}, id="negative-seed"),
    pytest.param({"stop": ("a", "b", "a")}, {"stop": ("a", "b")}, id="duplicate-stops"),
    pytest.param({"logit_bias": {3: 0.0, 4: 1}}, {"logit_bias": {4: 1.0}}, id="zero-bias-dropped"),
    pytest.param({"stop_token_ids": (7, 7, 2)}, {"stop_token_ids": (7, 2)}, id="duplicate-stop-ids"),
]


@pytest.mark.parametrize(("fields", "expected"), NORMALISED)
def test_normalisation(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    params = SamplingParams(**fields).validated(vocab_size=VOCAB)
    for name, value in expected.items():
        assert (
            dict(getattr(params, name)) == value if name == "logit_bias" else getattr(params, name) == value
        )


def test_validated_params_are_immutable() -> None:
    bias = {1: 2.0}
    params = SamplingParams(logit_bias=bias).validated(vocab_size=VOCAB)
    bias[1] = 50.0
    assert params.logit_bias[1] == 2.0
    with pytest.raises(TypeError):
        params.logit_bias[1] = 3.0  # type: ignore[index]
