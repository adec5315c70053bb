"""Generate the Python gRPC stubs (and their .pyi type stubs) from proto/ into the client package.

Output goes to a temporary directory first and replaces `<out>/parley/` only once protoc succeeded,
so a failed generation never leaves half-written stubs behind.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]


def generate(proto_root: Path, out: Path) -> list[Path]:
    """Compile every .proto under proto_root into out/<package path>; return the generated files."""
    protos = sorted(proto_root.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"error: no .proto files under {proto_root}")
    well_known = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(dir=out, prefix=".stubs-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *(str(p) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("error: protoc failed (see the messages above)")
        generated = Path(tmp)
        for package_dir in [d for d in generated.rglob("*") if d.is_dir()] + [generated]:
            (package_dir / "__init__.py").touch()
            (package_dir / "py.typed").touch()
        (generated / "__init__.py").unlink()
        (generated / "py.typed").unlink()
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
