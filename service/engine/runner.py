"""ModelRunner: one ONNX Runtime session over a prepared model directory, with the KV cache bound in place.

Two calls, both synchronous and meant for the engine's own thread:
- `prefill(slot, tokens, start)`: run tokens [start, start + len) of one sequence as a batch of one on
  that slot's rows; returns the logits of its last token.
- `decode(tokens, cached, head)`: one new token for each of slots 0..n-1 in a single run; returns [n, V]
  logits. With Parley's kernels the run also fills the sampling head's outputs for `head`
  (SamplingColumns.head, service/sampling/top.py), read with `top_tokens(n)`.

The graph writes new K/V rows straight into the cache: every past input is bound to the same memory as
its present output (DESIGN.md §4), so no step copies the cache.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from models.card import ModelCard, load_card
from service.engine import kernels
from service.engine.kernels import KernelMode
from service.engine.kernels.fusion import (
    EDIT_FACTORS,
    EDIT_ROWS,
    EDIT_TOKENS,
    FUSED_CACHE_DTYPE,
    SAMPLING_MASSES,
    SAMPLING_SCALES,
    TOP_IDS,
    TOP_LOGITS,
    FusionReport,
    add_sampling_head,
    fuse,
)
from service.engine.kv_cache import Device, KVCache, KVShape
from service.errors import EngineFailure, ModelError
from service.sampling.columns import HeadInputs, TokenEdits
from service.sampling.top import TOP_TOKENS, TopTokens

log = logging.getLogger(__name__)

_ORT_TYPES = {np.dtype(np.float32): np.float32, np.dtype(np.float16): np.float16}


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_device_present()


def _cuda_device_present() -> bool:
    # onnxruntime-gpu lists the CUDA provider whether or not a GPU exists; the driver tells the truth.
    return Path("/proc/driver/nvidia/gpus").is_dir() and any(Path("/proc/driver/nvidia/gpus").iterdir())


@dataclass(frozen=True)
class RunnerOptions:
    max_batch: int = 8
    kv_capacity: int | None = None  # tokens per slot; None = the model's context window
    threads: int | None = None  # intra-op threads; None = all available cores
    device: Literal["auto", "cpu", "cuda"] = "auto"
    profile_prefix: str | None = None  # write an ONNX Runtime kernel profile (benchmark use)
    kernels: KernelMode = "auto"  # Parley's custom ops (service/engine/kernels)


DEFAULT_RUNNER_OPTIONS = RunnerOptions()


class ModelRunner:
    def __init__(
        self, model_dir: Path, options: RunnerOptions = DEFAULT_RUNNER_OPTIONS, card: ModelCard | None = None
    ) -> None:
        self.card = card or load_card(model_dir)
        self.model_dir = model_dir
        self.options = options
        capacity = options.kv_capacity or self.card.context_window
        if not 0 < capacity <= self.card.context_window:
            raise ModelError(
                f"kv capacity {capacity} must be in [1, {self.card.context_window}] "
                "(the graph's context window)"
            )
        self.device: Device = (
            "cuda" if options.device == "cuda" or (options.device == "auto" and cuda_available()) else "cpu"
        )
        if self.device == "cuda":
            raise ModelError(
                "the CUDA runner is service/engine/cuda_runner.py; ModelRunner is the CPU runner"
            )
        self.threads = options.threads or available_cores()
        self.fusions: FusionReport | None = None  # with Parley's kernels: what the graph rewrite fused
        self.sampling_head = False  # with Parley's kernels: the graph ends in a SamplingHead
        self.session, self.decode_session = self._create_sessions()
        fused_attention = self.fusions is not None and self.fusions.attention > 0
        kv_dtype = FUSED_CACHE_DTYPE if fused_attention else self.card.graph.kv_dtype
        self.kv_shape = KVShape(
            n_layers=self.card.n_layers,
            n_kv_heads=self.card.n_kv_heads,
            head_dim=self.card.head_dim,
            max_batch=options.max_batch,
            capacity=capacity,
            dtype=np.float16 if kv_dtype == "float16" else np.float32,
        )
        self.kv = KVCache(self.kv_shape)
        self.usable_capacity = capacity  # tokens a sequence may hold
        self.warm_up_batch_sizes: tuple[int, ...] = (1, options.max_batch)  # the largest touches every KV row
        self.vocab_size = self.card.vocab_size
        self._logits = np.zeros((options.max_batch, 1, self.vocab_size), dtype=np.float32)
        self._decode_bindings: dict[int, ort.IOBinding] = {}
        self._prefill_bindings: dict[int, ort.IOBinding] = {}
        self._prefill_logits = np.zeros((1, 1, self.vocab_size), dtype=np.float32)
        batch = options.max_batch
        self._head: HeadInputs | None = None  # the last decode's head inputs
        self._top_ids = np.zeros((batch, TOP_TOKENS), np.int64)
        self._top_logits = np.zeros((batch, TOP_TOKENS), np.float32)
        self._masses = np.zeros((batch, 2), np.float64)
        self._prefill_inputs = _candidates_only(1)  # a prefill's head: unused (its row is never sampled)
        self._prefill_head = (  # the head's outputs of a prefill run
            np.zeros((1, TOP_TOKENS), np.int64),
            np.zeros((1, TOP_TOKENS), np.float32),
            np.zeros((1, 2), np.float64),
        )

    def _create_session(
        self, graph: str | bytes, custom_ops: Path | None = None, spin: bool = True
    ) -> ort.InferenceSession:
        so = ort.SessionOptions()
        if not spin:
            # A prefill session beside a decode session: its idle pool thread must not spin on the core
            # the decode run needs next (alternating prefill chunks and decode steps measured 10% faster).
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if self.options.profile_prefix is not None:
            so.enable_profiling = True
            so.profile_file_prefix = self.options.profile_prefix
        if custom_ops is not None:
            so.register_custom_ops_library(str(custom_ops))
            # a graph loaded from memory finds its weights file here
            so.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(self.model_dir)
            )
        path = self.model_dir / self.card.graph.file
        try:
            return ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT's own exception types
            raise ModelError(f"{path}: ONNX Runtime cannot load the graph: {exc}") from None

    def _kernel_library(self) -> Path | None:
        """Parley's kernel library when this runner should use it (per options.kernels), else None. The
        kernels need their vector paths (AVX-512 VNNI) and the fp32 CPU graph."""
        mode = self.options.kernels
        if mode == "off":
            return None
        built = kernels.library()
        problem = None
        if built is None:
            problem = (
                "the kernel library is not built (`python -m service.engine.kernels.build`; make setup does)"
            )
        elif not kernels.fast_quant_linear(built):
            problem = "this CPU lacks AVX-512 VNNI, which Parley's kernels are built for"
        elif self.card.graph.kv_dtype != "float32":
            problem = (
                f"Parley's kernels take the fp32 CPU graph; this model's graph is {self.card.graph.kv_dtype}"
            )
        if problem is None:
            return built
        if mode == "on":
            raise ModelError(f"kernels='on' but {problem}")
        log.warning("running ONNX Runtime's own kernels, which are slower: %s", problem)
        return None

    def _create_sessions(self) -> tuple[ort.InferenceSession, ort.InferenceSession]:
        """(prefill, decode) sessions. With Parley's kernels both run one rewritten graph with every fusion
        (service/engine/kernels/fusion.py; the KV cache becomes fp16), and the prefill session does not
        spin its idle threads. Without the kernels one stock session serves both."""
        path = self.model_dir / self.card.graph.file
        built = self._kernel_library()
        if built is None:
            stock = self._create_session(str(path))
            return stock, stock
        graph = onnx.load(str(path), load_external_data=False)
        self.fusions = fuse(graph)
        add_sampling_head(graph, self.card.graph.logits, TOP_TOKENS)
        self.sampling_head = True
        log.info("graph rewritten for Parley's kernels: %s, and a sampling head", self.fusions)
        rewritten = graph.SerializeToString()
        return self._create_session(rewritten, built, spin=False), self._create_session(rewritten, built)

    # --- bindings -------------------------------------------------------------------------------
    def _bind_cache(self, binding: ort.IOBinding, first_slot: int, n: int) -> None:
        io, shape = self.card.graph, self.kv_shape.batch_shape(n)
        element = _ORT_TYPES[np.dtype(self.kv_shape.dtype)]
        for layer in range(self.kv_shape.n_layers):
            for kind, past, present in (
                ("key", io.past_key, io.present_key),
                ("value", io.past_value, io.present_value),
            ):
                ptr = self.kv.pointer(layer, kind, first_slot)  # type: ignore[arg-type]
                binding.bind_input(past.format(i=layer), "cpu", 0, element, shape, ptr)
                binding.bind_output(present.format(i=layer), "cpu", 0, element, shape, ptr)

    def _decode_binding(self, n: int) -> ort.IOBinding:
        binding = self._decode_bindings.get(n)
        if binding is None:
            binding = self.decode_session.io_binding()
            self._bind_cache(binding, 0, n)
            binding.bind_output(
                self.card.graph.logits,
                "cpu",
                0,
                np.float32,
                [n, 1, self.vocab_size],
                self._logits.ctypes.data,
            )
            if self.sampling_head:
                self._bind_head_outputs(binding, self._top_ids[:n], self._top_logits[:n], self._masses[:n])
            self._decode_bindings[n] = binding
        return binding

    def _prefill_binding(self, slot: int) -> ort.IOBinding:
        binding = self._prefill_bindings.get(slot)
        if binding is None:
            binding = self.session.io_binding()
            self._bind_cache(binding, slot, 1)
            binding.bind_output(
                self.card.graph.logits,
                "cpu",
                0,
                np.float32,
                [1, 1, self.vocab_size],
                self._prefill_logits.ctypes.data,
            )
            if self.sampling_head:
                self._bind_head_outputs(binding, *self._prefill_head)
            self._prefill_bindings[slot] = binding
        return binding

    @staticmethod
    def _bind_head_outputs(
        binding: ort.IOBinding, ids: np.ndarray, top: np.ndarray, masses: np.ndarray
    ) -> None:
        for name, array in ((TOP_IDS, ids), (TOP_LOGITS, top), (SAMPLING_MASSES, masses)):
            binding.bind_output(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)

    def _run(
        self,
        session: ort.InferenceSession,
        binding: ort.IOBinding,
        input_ids: np.ndarray,
        seqlens_k: np.ndarray,
        total: int,
        head: HeadInputs,
    ) -> None:
        io = self.card.graph
        if self.sampling_head:
            binding.bind_cpu_input(SAMPLING_SCALES, head.scales)
            binding.bind_cpu_input(EDIT_ROWS, head.edits.rows)
            binding.bind_cpu_input(EDIT_TOKENS, head.edits.tokens)
            binding.bind_cpu_input(EDIT_FACTORS, head.edits.factors)
        binding.bind_cpu_input(io.input_ids, input_ids)
        binding.bind_cpu_input(io.seqlens_k, seqlens_k)
        binding.bind_cpu_input(io.total_sequence_length, np.array(total, dtype=np.int32))
        try:
            session.run_with_iobinding(binding)
        except Exception as exc:  # ORT's own exception types: a failed run fails the step, not the process
            raise EngineFailure(f"onnxruntime run failed: {exc}") from exc

    # --- steps ----------------------------------------------------------------------------------
    def prefill(self, slot: int, tokens: np.ndarray, start: int) -> np.ndarray:
        """Cache tokens [start, start + len) for `slot`; return the last token's logits [V] (a view valid
        until the next prefill)."""
        count = len(tokens)
        end = start + count
        if count == 0 or end > self.kv_shape.capacity or not 0 <= slot < self.kv_shape.max_batch:
            raise EngineFailure(f"prefill of {count} tokens at {start} on slot {slot} does not fit the cache")
        ids = np.ascontiguousarray(tokens, dtype=np.int64).reshape(1, count)
        seqlens = np.array([end - 1], dtype=np.int32)
        self._run(self.session, self._prefill_binding(slot), ids, seqlens, end, self._prefill_inputs)
        logits: np.ndarray = self._prefill_logits[0, 0]
        return logits

    def decode(self, tokens: np.ndarray, cached: np.ndarray, head: HeadInputs | None = None) -> np.ndarray:
        """One token per slot 0..n-1; `cached[r]` = tokens already in slot r's cache. Returns [n, V]
        logits (a view valid until the next decode). `head`: the sampling head's inputs
        (SamplingColumns.head; None: the raw rows' candidates only)."""
        n = len(tokens)
        if not 0 < n <= self.kv_shape.max_batch or int(cached.max()) >= self.kv_shape.capacity:
            raise EngineFailure(
                f"decode of {n} rows (longest {int(cached.max())} cached) does not fit the cache"
            )
        ids = np.ascontiguousarray(tokens, dtype=np.int64).reshape(n, 1)
        seqlens = np.ascontiguousarray(cached, dtype=np.int32)  # tokens after this step − 1
        self._head = _candidates_only(n) if head is None else head  # TopTokens.inputs: the sampler checks it
        self._run(
            self.decode_session, self._decode_binding(n), ids, seqlens, int(cached.max()) + 1, self._head
        )
        logits: np.ndarray = self._logits[:n, 0]
        return logits

    def top_tokens(self, n: int) -> TopTokens | None:
        """The sampling head's outputs for the last decode of n rows (views valid until the next decode);
        None without Parley's kernels."""
        if not self.sampling_head or self._head is None:
            return None
        return TopTokens(self._head, self._top_ids[:n], self._top_logits[:n], self._masses[:n])


def _candidates_only(rows: int) -> HeadInputs:
    """Head inputs that ask for each raw row's candidates and no normaliser."""
    return HeadInputs(np.zeros((rows, 2), np.float32), TokenEdits.empty())
