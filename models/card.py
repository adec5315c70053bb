"""The model card (`model.json`): one versioned schema, written by the converter, validated on load.

The server trusts nothing else about a model directory: sizes, special tokens, stop ids, the chat
template and the graph's I/O names all come from here.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from service.errors import ModelError

CARD_FILE = "model.json"
SCHEMA_VERSION = 1

Precision = Literal["int4", "int8", "fp32", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True)
class GraphIO:
    """Names and files of the ONNX graph (the contract in DESIGN.md §4)."""

    file: str = "model.onnx"
    weights_file: str = "model.onnx.data"
    input_ids: str = "input_ids"
    seqlens_k: str = "seqlens_k"
    total_sequence_length: str = "total_sequence_length"
    past_key: str = "past_key_values.{i}.key"
    past_value: str = "past_key_values.{i}.value"
    logits: str = "logits"
    present_key: str = "present.{i}.key"
    present_value: str = "present.{i}.value"
    kv_dtype: Literal["float32", "float16"] = "float32"


@dataclass(frozen=True)
class SourceInfo:
    file_name: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ModelCard:
    name: str
    architecture: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    context_window: int  # tokens the graph's KV buffers hold (≤ train_context)
    train_context: int  # the model's own context length from the GGUF
    rope_theta: float
    rms_eps: float
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    add_bos: bool
    special_tokens: dict[str, int]  # every control token: text -> id
    stop_token_ids: list[int]
    chat_template: str | None  # Jinja source from the GGUF, if it has one
    builtin_template: str | None  # name of a built-in template when there is no Jinja source
    precision: Precision
    source: SourceInfo
    converter_version: str
    graph: GraphIO = field(default_factory=GraphIO)
    tokenizer_file: str = "tokenizer.json"
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"


def _require(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise ModelError(f"{path}: invalid model card: {what}")


def card_from_dict(data: dict[str, Any], path: Path) -> ModelCard:
    """Build and validate a card from parsed JSON; every problem names the file and the field."""
    _require(isinstance(data, dict), path, "top level must be an object")
    version = data.get("schema_version")
    _require(
        version == SCHEMA_VERSION,
        path,
        f"schema_version {version!r} is not supported (this Parley reads version {SCHEMA_VERSION}); "
        "prepare the model again with `parley prepare`",
    )
    try:
        graph = GraphIO(**data.pop("graph", {}))
        source = SourceInfo(**data.pop("source"))
        card = ModelCard(graph=graph, source=source, **data)
    except (TypeError, KeyError) as exc:
        raise ModelError(f"{path}: invalid model card: {exc}") from None
    ints = ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim", "ffn_size", "vocab_size")
    for name in (*ints, "context_window", "train_context"):
        value = getattr(card, name)
        _require(
            isinstance(value, int) and value > 0, path, f"{name} must be a positive integer, got {value!r}"
        )
    _require(card.n_heads % card.n_kv_heads == 0, path, "n_heads must be a multiple of n_kv_heads")
    _require(card.context_window <= card.train_context, path, "context_window exceeds train_context")
    _require(card.precision in PRECISIONS, path, f"precision must be one of {', '.join(PRECISIONS)}")
    _require(math.isfinite(card.rope_theta) and card.rope_theta > 0, path, "rope_theta must be positive")
    _require(math.isfinite(card.rms_eps) and card.rms_eps > 0, path, "rms_eps must be positive")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(card, name)
        _require(
            value is None or (isinstance(value, int) and 0 <= value < card.vocab_size),
            path,
            f"{name} {value!r} is outside the vocabulary",
        )
    for text, token_id in card.special_tokens.items():
        _require(0 <= token_id < card.vocab_size, path, f"special token {text!r} id {token_id} out of range")
    _require(bool(card.stop_token_ids), path, "stop_token_ids must not be empty")
    for token_id in card.stop_token_ids:
        _require(0 <= token_id < card.vocab_size, path, f"stop token id {token_id} out of range")
    _require(
        card.chat_template is not None or card.builtin_template is not None,
        path,
        "needs chat_template or builtin_template",
    )
    return card


def load_card(model_dir: Path) -> ModelCard:
    """Read and validate `<model_dir>/model.json`, checking the files it names exist."""
    path = model_dir / CARD_FILE
    if not path.is_file():
        raise ModelError(
            f"{model_dir}: not a model directory (no {CARD_FILE}); prepare one with `parley prepare`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable model card: {exc}") from None
    card = card_from_dict(data, path)
    for name in (card.graph.file, card.tokenizer_file):
        if not (model_dir / name).is_file():
            raise ModelError(f"{model_dir}: the card names {name}, which is missing")
    return card


def write_card(card: ModelCard, model_dir: Path) -> None:
    """Write model.json atomically (temp file + rename)."""
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".model-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(card.to_json())
    Path(tmp).replace(model_dir / CARD_FILE)
