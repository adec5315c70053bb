"""Building SamplingColumns by hand for tests that exercise the pure sampler without per-sequence state."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.sampling.columns import NO_LOGPROBS, SamplingColumns, TokenValues


def make_columns(
    batch: int,
    *,
    temperature: float | list[float] = 1.0,
    top_k: int | list[int] = 0,
    top_p: float | list[float] = 1.0,
    min_p: float | list[float] = 0.0,
    uniform: NDArray[np.float64] | None = None,
    top_logprobs: int | list[int] = NO_LOGPROBS,
    logit_bias: TokenValues | None = None,
    history: TokenValues | None = None,
    suppressed: TokenValues | None = None,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
) -> SamplingColumns:
    """Columns for `batch` rows; a scalar applies to every row, a list gives one value per row."""

    def column(value: float | list[float] | list[int], dtype: type) -> NDArray[Any]:
        return np.broadcast_to(np.asarray(value, dtype=dtype).reshape(-1, 1), (batch, 1)).copy()

    return SamplingColumns(
        temperature=column(temperature, np.float32),
        top_k=column(top_k, np.int64),
        top_p=column(top_p, np.float64),
        min_p=column(min_p, np.float32),
        repetition_penalty=column(repetition_penalty, np.float32),
        frequency_penalty=column(frequency_penalty, np.float32),
        presence_penalty=column(presence_penalty, np.float32),
        top_logprobs=column(top_logprobs, np.int64),
        uniform=(np.zeros((batch, 1)) if uniform is None else uniform.reshape(batch, 1)),
        logit_bias=logit_bias or TokenValues.empty(),
        history=history or TokenValues.empty(),
        suppressed=suppressed or TokenValues.empty(),
    )
