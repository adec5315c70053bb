"""The generated Python stubs in client/python/parley are current, and the vendored google.rpc proto is
the one the runtime uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.rpc import status_pb2

REPO = Path(__file__).resolve().parents[2]
INSTALLED = REPO / "client" / "python" / "parley"
GENERATOR = REPO / "client" / "python" / "generate_stubs.py"


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.name != ".generated"
    }


def test_installed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--proto-root", str(REPO / "proto"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    fresh, installed = _files(tmp_path / "parley"), _files(INSTALLED)
    assert sorted(fresh) == sorted(installed), "run `make setup` to regenerate client/python/parley"
    stale = [name for name in fresh if fresh[name] != installed[name]]
    assert stale == [], f"stale generated files {stale}: run `make setup` to regenerate client/python/parley"
    # Only parley.v1 is generated; google.rpc comes from googleapis-common-protos at run time.
    assert all(name.startswith("v1/") or name in ("__init__.py", "py.typed") for name in fresh)


def test_vendored_status_proto_is_the_installed_one() -> None:
    """buf lints against proto/google/rpc/status.proto; protoc and the runtime use the installed copy."""
    installed = Path(status_pb2.__file__).with_name("status.proto")
    assert (REPO / "proto" / "google" / "rpc" / "status.proto").read_bytes() == installed.read_bytes()
