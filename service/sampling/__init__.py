"""Token sampling: per-request parameters, the vectorised batch sampler and its per-sequence state.

Plain numpy, no gRPC. See sampler.py for the steps and their order.
"""

from service.sampling.columns import HeadInputs, SampledTokens, SamplingColumns, TokenEdits, TokenLogprobs
from service.sampling.params import SamplingParams
from service.sampling.sampler import NonFiniteLogits, sample
from service.sampling.state import SequenceEdits, SequenceSampling, build_columns, record_step

__all__ = [
    "HeadInputs",
    "NonFiniteLogits",
    "SampledTokens",
    "SamplingColumns",
    "SamplingParams",
    "SequenceEdits",
    "SequenceSampling",
    "TokenEdits",
    "TokenLogprobs",
    "build_columns",
    "record_step",
    "sample",
]
