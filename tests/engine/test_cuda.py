"""The CUDA runner (fp16, CUDA graphs). Runs only where a CUDA GPU exists; skipped elsewhere, saying why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.prepare import PrepareRequest, prepare
from service.engine.runner import ModelRunner, RunnerOptions, cuda_available
from tests.models.tiny_gguf import write_tiny_llama

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not cuda_available(), reason="no CUDA GPU on this machine: the CUDA runner is not exercised"
    ),
]


@pytest.fixture(scope="module")
def fp16_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cuda")
    gguf_path = write_tiny_llama(root / "tiny.gguf", "Q8_0")
    return prepare(PrepareRequest(gguf_path, None, "fp16", None, root / "m"), show_progress=False).model_dir


def test_cuda_decode_matches_cpu(fp16_model: Path) -> None:
    from service.engine.cuda_runner import CudaModelRunner

    cpu = ModelRunner(fp16_model, RunnerOptions(max_batch=4, kv_capacity=64, device="cpu"))
    gpu = CudaModelRunner(fp16_model, RunnerOptions(max_batch=4, kv_capacity=64, device="cuda"))
    prompt = np.arange(3, 20)
    for runner in (cpu, gpu):
        runner.prefill(0, prompt[:-1], 0)
    for step in range(6):  # several replays of the batch-1 graph
        token = np.array([prompt[-1] if step == 0 else 5 + step])
        cached = np.array([len(prompt) - 1 + step])
        expected = cpu.decode(token, cached).copy()
        np.testing.assert_allclose(gpu.decode(token, cached), expected, atol=5e-2, rtol=5e-2)


def test_bucket_padding_rows_do_not_touch_other_slots(fp16_model: Path) -> None:
    from service.engine.cuda_runner import CudaModelRunner

    gpu = CudaModelRunner(fp16_model, RunnerOptions(max_batch=4, kv_capacity=64, device="cuda"))
    prompt = np.arange(3, 15)
    cached = len(prompt) - 1
    gpu.prefill(3, prompt[:-1], 0)  # a parked slot: row 3 is the padding row of a 3-row step in bucket 4
    gpu.kv.copy_slot(3, 0, cached)
    reference = gpu.decode(np.array([prompt[-1]]), np.array([cached])).copy()
    for _ in range(3):
        gpu.decode(np.array([7, 8, 9]), np.array([1, 1, 1]))  # slots 0..2, padding in slot 3
    gpu.kv.copy_slot(3, 0, cached)
    np.testing.assert_array_equal(gpu.decode(np.array([prompt[-1]]), np.array([cached])), reference)
