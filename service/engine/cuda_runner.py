"""The CUDA runner: the same two calls as ModelRunner (prefill, decode), on a GPU.

- The model must be prepared with `--precision fp16` (GroupQueryAttention has no fp32 CUDA kernel).
- KV buffers live on the device, one [max_batch, kv_heads, capacity, head_dim] allocation per layer and
  kind; slots are bound by address exactly as on the CPU, so decode over slots 0..n-1 copies nothing.
- Decode runs through CUDA graphs: one captured graph per batch bucket (1, 2, 4, ...), selected with the
  `gpu_graph_id` run option. A graph replays fixed addresses and launch parameters, so each bucket has
  its own device input buffers (updated in place), `total_sequence_length` is pinned to the capacity,
  and rows beyond n (bucket padding) write their K/V into the last position of their slot, which the
  engine never uses (capacity − 1 usable tokens per slot).
- Prefill has varying shapes: it runs without a graph (gpu_graph_id −1).
- All runs happen on the engine's one thread, as CUDA graph capture and replay require.

No GPU exists on the machines this was written on: tests/engine/test_cuda.py runs it where one does.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from models.card import GraphIO, ModelCard, load_card
from service.engine.kv_cache import KVShape
from service.engine.runner import DEFAULT_RUNNER_OPTIONS, RunnerOptions
from service.errors import EngineFailure, ModelError
from service.sampling.columns import HeadInputs
from service.sampling.top import TopTokens

log = logging.getLogger(__name__)

_MEMCPY_DEVICE_TO_DEVICE = 3
WARMUP_RUNS_BEFORE_CAPTURE = 2  # ORT allocates on the first run(s) of a graph id and captures after


def _cudart() -> ctypes.CDLL:
    """The CUDA runtime ORT itself loads, for device-to-device copies of KV slots."""
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls(cuda=True, cudnn=False)
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise ModelError("CUDA runtime library (libcudart) not found; install onnxruntime-gpu[cuda,cudnn]")


def batch_buckets(max_batch: int) -> list[int]:
    buckets, size = [], 1
    while size < max_batch:
        buckets.append(size)
        size *= 2
    return [*buckets, max_batch]


KVKind = Literal["key", "value"]
_KINDS: tuple[KVKind, ...] = ("key", "value")


def cache_io(io: GraphIO) -> tuple[tuple[KVKind, str, str], ...]:
    return (("key", io.past_key, io.present_key), ("value", io.past_value, io.present_value))


class CudaKVCache:
    device: Literal["cuda"] = "cuda"

    def __init__(self, shape: KVShape, device_id: int) -> None:
        self.shape = shape
        full = [shape.max_batch, shape.n_kv_heads, shape.capacity, shape.head_dim]
        make = ort.OrtValue.ortvalue_from_shape_and_type
        self.keys = [make(full, np.float16, "cuda", device_id) for _ in range(shape.n_layers)]
        self.values = [make(full, np.float16, "cuda", device_id) for _ in range(shape.n_layers)]
        self._scratch = make([shape.slot_elements], np.float16, "cuda", device_id)
        self._cudart = _cudart()
        self._row_bytes = shape.head_dim * 2  # one position of one head, fp16

    def pointer(self, layer: int, kind: Literal["key", "value"], slot: int) -> int:
        buffer = self.keys[layer] if kind == "key" else self.values[layer]
        return int(buffer.data_ptr()) + slot * self.shape.slot_bytes

    def _copy(self, dst: int, src: int, length: int) -> None:
        """Copy the first `length` positions of every head (heads are strided by the capacity)."""
        head_stride = self.shape.capacity * self._row_bytes
        width = length * self._row_bytes
        # cudaMemcpy2D(dst, dpitch, src, spitch, width, height, kind): one row per KV head.
        status = self._cudart.cudaMemcpy2D(
            ctypes.c_void_p(dst),
            ctypes.c_size_t(head_stride),
            ctypes.c_void_p(src),
            ctypes.c_size_t(head_stride),
            ctypes.c_size_t(width),
            ctypes.c_size_t(self.shape.n_kv_heads),
            ctypes.c_int(_MEMCPY_DEVICE_TO_DEVICE),
        )
        if status != 0:
            raise EngineFailure(f"cudaMemcpy2D failed with CUDA error {status}")

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        if src == dst or length <= 0:
            return
        for layer in range(self.shape.n_layers):
            for kind in _KINDS:
                self._copy(self.pointer(layer, kind, dst), self.pointer(layer, kind, src), length)

    def swap_slots(self, a: int, b: int, length_a: int, length_b: int) -> None:
        scratch = int(self._scratch.data_ptr())
        for layer in range(self.shape.n_layers):
            for kind in _KINDS:
                pa, pb = self.pointer(layer, kind, a), self.pointer(layer, kind, b)
                if length_a:
                    self._copy(scratch, pa, length_a)
                if length_b:
                    self._copy(pa, pb, length_b)
                if length_a:
                    self._copy(pb, scratch, length_a)


class _Bucket:
    """Fixed device buffers and a binding for one captured decode graph."""

    def __init__(self, runner: CudaModelRunner, size: int, graph_id: int) -> None:
        make = ort.OrtValue.ortvalue_from_shape_and_type
        device = runner.device_id
        io = runner.card.graph
        self.size = size
        self.runs = 0
        self.input_ids = make([size, 1], np.int64, "cuda", device)
        self.seqlens = make([size], np.int32, "cuda", device)
        self.logits = make([size, 1, runner.card.vocab_size], np.float32, "cuda", device)
        self.options = ort.RunOptions()
        self.options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self.binding = runner.session.io_binding()
        self.binding.bind_ortvalue_input(io.input_ids, self.input_ids)
        self.binding.bind_ortvalue_input(io.seqlens_k, self.seqlens)
        self.binding.bind_cpu_input(io.total_sequence_length, np.array(runner.capacity, dtype=np.int32))
        self.binding.bind_ortvalue_output(io.logits, self.logits)
        runner.bind_cache(self.binding, 0, size)


class CudaModelRunner:
    def __init__(
        self,
        model_dir: Path,
        options: RunnerOptions = DEFAULT_RUNNER_OPTIONS,
        card: ModelCard | None = None,
        device_id: int = 0,
    ) -> None:
        self.card = card or load_card(model_dir)
        if self.card.graph.kv_dtype != "float16":
            raise ModelError(
                f"{model_dir}: the CUDA path needs an fp16 model (this one is {self.card.precision}); "
                "prepare one with `parley prepare --precision fp16`"
            )
        self.model_dir = model_dir
        self.device_id = device_id
        self.capacity = options.kv_capacity or self.card.context_window
        self.kv_shape = KVShape(
            n_layers=self.card.n_layers,
            n_kv_heads=self.card.n_kv_heads,
            head_dim=self.card.head_dim,
            max_batch=options.max_batch,
            capacity=self.capacity,
            dtype=np.float16,
        )
        self.kv = CudaKVCache(self.kv_shape, device_id)
        self.usable_capacity = self.capacity - 1  # the last position is the padding rows' scratch
        self.vocab_size = self.card.vocab_size
        self.session = self._create_session()
        self.warm_up_batch_sizes = tuple(batch_buckets(options.max_batch))  # one CUDA graph each
        self._buckets = {
            size: _Bucket(self, size, graph_id)
            for graph_id, size in enumerate(batch_buckets(options.max_batch), 1)
        }
        self._prefill_options = ort.RunOptions()
        self._prefill_options.add_run_config_entry("gpu_graph_id", "-1")

    def _create_session(self) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        providers = [
            ("CUDAExecutionProvider", {"device_id": str(self.device_id), "enable_cuda_graph": "1"}),
            "CPUExecutionProvider",
        ]
        path = self.model_dir / self.card.graph.file
        try:
            return ort.InferenceSession(str(path), so, providers=providers)
        except Exception as exc:  # ORT's own exception types
            raise ModelError(f"{path}: ONNX Runtime cannot load the graph on CUDA: {exc}") from None

    def bind_cache(self, binding: ort.IOBinding, first_slot: int, n: int) -> None:
        io, shape = self.card.graph, self.kv_shape.batch_shape(n)
        for layer in range(self.kv_shape.n_layers):
            for kind, past, present in cache_io(io):
                ptr = self.kv.pointer(layer, kind, first_slot)
                binding.bind_input(past.format(i=layer), "cuda", self.device_id, np.float16, shape, ptr)
                binding.bind_output(present.format(i=layer), "cuda", self.device_id, np.float16, shape, ptr)

    def prefill(self, slot: int, tokens: np.ndarray, start: int) -> np.ndarray:
        count = len(tokens)
        end = start + count
        if count == 0 or end > self.capacity - 1:
            raise EngineFailure(f"prefill of {count} tokens at {start} does not fit the cache")
        io = self.card.graph
        binding = self.session.io_binding()
        binding.bind_cpu_input(io.input_ids, np.ascontiguousarray(tokens, dtype=np.int64).reshape(1, count))
        binding.bind_cpu_input(io.seqlens_k, np.array([end - 1], dtype=np.int32))
        binding.bind_cpu_input(io.total_sequence_length, np.array(end, dtype=np.int32))
        binding.bind_output(io.logits, "cpu")
        self.bind_cache(binding, slot, 1)
        self._run(binding, self._prefill_options)
        logits: np.ndarray = binding.copy_outputs_to_cpu()[0][0, 0]
        return logits

    def decode(self, tokens: np.ndarray, cached: np.ndarray, head: HeadInputs | None = None) -> np.ndarray:
        """As ModelRunner.decode; this graph has no sampling head (its op is CPU-only), so `head` is
        unused and top_tokens is None: the sampler reads the logits."""
        n = len(tokens)
        if int(cached.max()) >= self.capacity - 1:
            raise EngineFailure(
                "decode past the usable cache (the last position is the padding rows' scratch)"
            )
        bucket = self._buckets[next(size for size in self._buckets if size >= n)]
        ids = np.zeros((bucket.size, 1), dtype=np.int64)
        ids[:n, 0] = tokens
        seqlens = np.full(bucket.size, self.capacity - 1, dtype=np.int32)  # padding rows: scratch position
        seqlens[:n] = cached
        bucket.input_ids.update_inplace(ids)
        bucket.seqlens.update_inplace(seqlens)
        self._run(bucket.binding, bucket.options)
        bucket.runs += 1
        logits: np.ndarray = bucket.logits.numpy()[:n, 0]
        return logits

    def top_tokens(self, n: int) -> TopTokens | None:
        return None

    def _run(self, binding: ort.IOBinding, options: ort.RunOptions) -> None:
        try:
            self.session.run_with_iobinding(binding, options)
        except Exception as exc:  # ORT's own exception types
            raise EngineFailure(f"onnxruntime CUDA run failed: {exc}") from exc
