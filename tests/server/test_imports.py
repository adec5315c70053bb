"""What the servicers call stays below the gRPC edge: only conversion, status and servicers import grpc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLAIN = [
    "service.config",
    "service.server.served_model",
    "service.server.generation",
    "service.server.requests",
]


@pytest.mark.parametrize("module", PLAIN, ids=[m.rsplit(".", 1)[-1] for m in PLAIN])
def test_plain_modules_load_no_grpc_or_protobuf_messages(module: str) -> None:
    probe = (
        f"import sys, {module}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'grpc_status', 'parley'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
