"""The sampler and the text pipeline stay below the gRPC edge: importing them loads no grpc module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("package", ["service.sampling", "service.text"], ids=["sampling", "text"])
def test_no_grpc_import(package: str) -> None:
    probe = (
        f"import sys, {package}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
