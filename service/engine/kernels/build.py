"""Compile parley_ops.c into a library ONNX Runtime loads (`python -m service.engine.kernels.build`).

ONNX Runtime's C headers are not on PyPI; the Go module proxy serves them inside yalue/onnxruntime_go, a
cgo binding that carries the official headers. The module zip is pinned by sha256 and only the two
headers are extracted. The C API is versioned, so headers of API 24 work with any newer runtime (ours
is 1.31). The library is built for this machine's CPU (-march=native) into a temp file, then renamed.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from service.engine.kernels import BUILD_DIR, LIBRARY, SOURCE, library

HEADERS_MODULE = "github.com/yalue/onnxruntime_go"
HEADERS_VERSION = "v1.27.0"  # carries ORT C API 24
HEADERS_SHA256 = "5b7c7e6878caa1f1bf5d5acc09bfdd9de4c2f1e1beee1ff5529570139c540cb0"
HEADERS = ("onnxruntime_c_api.h", "onnxruntime_ep_c_api.h")
PROXY = "https://proxy.golang.org"

# Fast-math pieces that let GCC vectorise dot products and sums, without giving up NaN/Inf semantics.
CFLAGS = [
    "-O3",
    "-fPIC",
    "-shared",
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-ffp-contract=fast",
    "-fvisibility=hidden",
]


class BuildError(RuntimeError):
    pass


def _say(message: str) -> None:
    print(f"parley kernels: {message}", file=sys.stderr, flush=True)


def fetch_headers(include_dir: Path) -> None:
    """Put ONNX Runtime's C API headers into include_dir (downloaded once, checked by sha256)."""
    if all((include_dir / h).is_file() for h in HEADERS):
        return
    include_dir.mkdir(parents=True, exist_ok=True)
    url = f"{PROXY}/{HEADERS_MODULE}/@v/{HEADERS_VERSION}.zip"
    _say(f"downloading ONNX Runtime C headers ({HEADERS_MODULE}@{HEADERS_VERSION}, ~23 MB)")
    with tempfile.TemporaryDirectory(dir=include_dir, prefix=".download-") as tmp:
        archive = Path(tmp) / "module.zip"
        try:
            with urllib.request.urlopen(url, timeout=120) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except OSError as exc:
            raise BuildError(f"cannot download {url}: {exc}") from None
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != HEADERS_SHA256:
            raise BuildError(f"{url}: sha256 {digest} does not match the pinned {HEADERS_SHA256}")
        with zipfile.ZipFile(archive) as module:
            for header in HEADERS:
                member = f"{HEADERS_MODULE}@{HEADERS_VERSION}/{header}"
                (Path(tmp) / header).write_bytes(module.read(member))
        for header in HEADERS:
            (Path(tmp) / header).replace(include_dir / header)


def compile_library(output: Path, march: str = "native") -> Path:
    """Compile parley_ops.c for `march` into `output` (through a temp file beside it). "native" uses every
    vector extension this CPU has; "x86-64" none, which builds (and lets the tests check) the plain-C
    paths that CPUs without AVX2 or AVX-512 VNNI run."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise BuildError("no C compiler (gcc or cc) on PATH; install gcc (apt-get install gcc)")
    include_dir = BUILD_DIR / "include"
    fetch_headers(include_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=output.parent, prefix=".partial-", suffix=".so", delete=False
    ) as tmp:
        partial = Path(tmp.name)
    try:
        flags = [*CFLAGS, f"-march={march}", f"-I{include_dir}"]
        cmd = [compiler, *flags, str(SOURCE), "-o", str(partial), "-lm"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BuildError(f"{' '.join(cmd)} failed:\n{result.stderr.strip()}")
        partial.chmod(0o755)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return output


def build(force: bool = False) -> Path:
    """Build the library for this CPU unless an up-to-date one exists; returns its path."""
    if not force and library() is not None:
        return LIBRARY
    _say(f"compiling {SOURCE.name} for this CPU")
    compile_library(LIBRARY)
    _say(f"built {LIBRARY}")
    return LIBRARY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if the library is up to date")
    args = parser.parse_args(argv)
    try:
        build(force=args.force)
    except BuildError as exc:
        print(f"parley kernels: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
