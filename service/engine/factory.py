"""Choose and build the model runner for this machine: CUDA (fp16 model, CUDA graphs) or CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from models.card import ModelCard, load_card
from service.engine.kv_cache import KVShape
from service.engine.runner import DEFAULT_RUNNER_OPTIONS, ModelRunner, RunnerOptions, cuda_available
from service.sampling.columns import HeadInputs
from service.sampling.top import TopTokens


class SlotStore(Protocol):
    def copy_slot(self, src: int, dst: int, length: int) -> None: ...
    def swap_slots(self, a: int, b: int, length_a: int, length_b: int) -> None: ...


class Runner(Protocol):
    """What the engine needs from a runner (see runner.py for the contract of each call)."""

    card: ModelCard
    kv_shape: KVShape
    usable_capacity: int
    warm_up_batch_sizes: tuple[int, ...]  # decode shapes to run once before serving

    @property
    def kv(self) -> SlotStore: ...

    def prefill(self, slot: int, tokens: np.ndarray, start: int) -> np.ndarray: ...
    def decode(
        self, tokens: np.ndarray, cached: np.ndarray, head: HeadInputs | None = None
    ) -> np.ndarray: ...
    def top_tokens(self, n: int) -> TopTokens | None: ...


def resolve_device(requested: Literal["auto", "cpu", "cuda"], card: ModelCard) -> Literal["cpu", "cuda"]:
    """auto: CUDA when a GPU is present and the model is fp16 (the only precision GroupQueryAttention
    runs on CUDA), else the CPU."""
    if requested == "auto":
        return "cuda" if cuda_available() and card.graph.kv_dtype == "float16" else "cpu"
    return requested


def create_runner(model_dir: Path, options: RunnerOptions = DEFAULT_RUNNER_OPTIONS) -> Runner:
    card = load_card(model_dir)
    if resolve_device(options.device, card) == "cuda":
        from service.engine.cuda_runner import CudaModelRunner

        return CudaModelRunner(model_dir, options, card)
    return ModelRunner(model_dir, options, card)
