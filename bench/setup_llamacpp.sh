#!/usr/bin/env bash
# Build llama-cpp-python into its own environment, bench/.venv-llamacpp (gitignored), for the side-by-side
# benchmark and for recording llama.cpp's token ids. It is not a dependency of the service.
#
# Idempotent: when the environment already holds this version built with these flags, it does nothing.
# Takes about 6 minutes on 2 cores (it compiles llama.cpp).
#
# Why these flags (DESIGN.md §5): the default native build enables AMX here and crashes in decode, so the
# CPU features are listed explicitly with AMX off. `--no-cache-dir` because pip would otherwise reuse a
# native wheel it built before, whatever CMAKE_ARGS say.
#
# Usage: bench/setup_llamacpp.sh            (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"
CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
-DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${HERE}/.venv-llamacpp"
STAMP="${VENV}/.parley-llamacpp"
WANTED="llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION} ${CMAKE_FLAGS}"

if [[ -f "${STAMP}" && "$(cat "${STAMP}")" == "${WANTED}" ]] \
    && "${VENV}/bin/python" -c "import llama_cpp" 2>/dev/null; then
    echo "llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION} is already built in ${VENV}: nothing to do"
    exit 0
fi

echo "building llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION} into ${VENV} (about 6 minutes)"
rm -f "${STAMP}"
test -x "${VENV}/bin/python" || "${PYTHON:-python3}" -m venv "${VENV}"
"${VENV}/bin/python" -m pip install --quiet --upgrade pip
CMAKE_ARGS="${CMAKE_FLAGS}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "${VENV}/bin/python" -m pip install --no-cache-dir --force-reinstall --no-binary llama-cpp-python \
    "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"
"${VENV}/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
echo "${WANTED}" > "${STAMP}"
