"""Parley's ONNX Runtime custom ops (parley_ops.c): where the built library lives and whether it exists.

build.py compiles it at set-up (`make setup`); fusion.py rewrites a graph to use it.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Literal, get_args

# auto: the kernels when built for this CPU (and the graph is fp32); on: require them; off: ORT's only
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
    """Whether `built` has its vector kernels (AVX-512 VNNI), which the runner requires: without them
    ONNX Runtime's own kernels are faster."""
    return bool(ctypes.CDLL(str(built)).ParleyFastQuantLinear())
