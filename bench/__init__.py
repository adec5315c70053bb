"""Benchmarks beside llama.cpp; setup_llamacpp.sh builds llama.cpp's environment (bench/.venv-llamacpp)."""

import os

# As in `parley`'s entry point: keep numpy's OpenBLAS from spinning a thread per core beside ONNX Runtime
# (the in-process engine subject shares this process). Set before anything imports numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
