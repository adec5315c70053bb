"""Parley's ONNX Runtime custom ops (parley_ops.c): where the built library lives and whether it exists.

build.py compiles it at set-up (`make setup`); fusion.py rewrites a graph to use it.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Literal, get_args

# auto: use the kernels when built (and the graph is fp32); on: require them; off: ONNX Runtime's only
KernelMode = Literal["auto", "on", "off"]
KERNEL_MODES: tuple[str, ...] = get_args(KernelMode)

SOURCE = Path(__file__).resolve().parent / "parley_ops.c"
BUILD_DIR = SOURCE.parent / "build"
LIBRARY = BUILD_DIR / "libparley_ops.so"


def library() -> Path | None:
    """The built library, or None when it has not been built (or is older than its source)."""
    if LIBRARY.is_file() and LIBRARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return LIBRARY
    return None


def fast_quant_linear(built: Path) -> bool:
    """Whether `built` has QuantLinear's vector kernel (AVX-512 VNNI); without it ONNX Runtime's own
    MatMulNBits is faster and the decode graph keeps it."""
    return bool(ctypes.CDLL(str(built)).ParleyFastQuantLinear())
