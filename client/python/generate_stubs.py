"""Generate the Python gRPC stubs (and their .pyi type stubs) for parley/v1 from proto/ into the client.

Only Parley's own package is generated. `google/protobuf/*` comes with grpcio-tools and
`google/rpc/status.proto` with googleapis-common-protos (installed by grpcio-status): generated code
imports their Python modules from those packages at run time, and protoc reads their .proto files from
there too (proto/google/rpc/status.proto is a byte-identical copy kept only for `buf lint`).

Output goes to a temporary directory first and replaces `<out>/parley/` only once protoc succeeded,
so a failed generation never leaves half-written stubs behind.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from google.rpc import status_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]

PACKAGE_DIR = Path("parley") / "v1"


def _plugin(name: str) -> str:
    """The path of a protoc plugin installed next to this interpreter (the venv need not be on PATH)."""
    found = shutil.which(name, path=sysconfig.get_path("scripts")) or shutil.which(name)
    if found is None:
        raise SystemExit(
            f"error: protoc plugin {name} not found; install mypy-protobuf (pip install -e '.[dev]')"
        )
    return found


def include_paths(proto_root: Path) -> list[Path]:
    """protoc include paths: installed googleapis protos first (so the vendored copy is never compiled),
    then the well-known types shipped with grpcio-tools, then our own root."""
    googleapis = Path(status_pb2.__file__).resolve().parents[2]  # <site-packages>/google/rpc/status_pb2.py
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    return [googleapis, well_known, proto_root]


def generate(proto_root: Path, out: Path) -> list[Path]:
    """Compile every .proto under proto_root/parley/v1 into out/parley/v1; return the generated files."""
    protos = sorted((proto_root / PACKAGE_DIR).glob("*.proto"))
    if not protos:
        raise SystemExit(f"error: no .proto files under {proto_root / PACKAGE_DIR}")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".stubs-") as tmp:
        args = [
            "grpc_tools.protoc",
            *(f"-I{path}" for path in include_paths(proto_root)),
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *(str(p) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("error: protoc failed (see the messages above)")
        generated = Path(tmp)
        for package_dir in [d for d in generated.rglob("*") if d.is_dir()]:
            (package_dir / "__init__.py").touch()
            (package_dir / "py.typed").touch()
        for top in generated.iterdir():
            target = out / top.name
            if target.exists():
                shutil.rmtree(target)
            top.rename(target)
    return sorted(p for p in (out / "parley").rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proto-root", type=Path, default=Path("proto"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    ns = parser.parse_args()
    files = generate(ns.proto_root, ns.out)
    print(f"generated {len(files)} files into {ns.out / 'parley'}", file=sys.stderr)


if __name__ == "__main__":
    main()
