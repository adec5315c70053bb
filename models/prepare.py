"""`parley prepare`: convert a GGUF into a model directory (model.onnx + weights, tokenizer.json, model.json).

Idempotent: a directory prepared from the same source file with the same options and converter version
is left alone. Everything is built in a temporary directory beside the target and renamed into place at
the end, so a failure (bad file, full disk, Ctrl-C) never leaves a half-written model directory.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
from tqdm import tqdm

from models.card import CARD_FILE, GraphIO, ModelCard, Precision, SourceInfo, load_card, write_card
from models.fetch import DEFAULT_MODEL, STORE, fetch_packaged, sha256_file
from models.gguf_source import GGUFSource
from models.graph_builder import GraphOptions, LlamaGraph
from models.onnx_writer import GraphAssembler
from models.tokenizer_builder import build_tokenizer
from service.errors import ModelError

log = logging.getLogger(__name__)


def _converter_version() -> str:
    """'1.<digest>': the digest of the converter's own sources, so a changed converter re-converts
    (a model prepared by other code is never mistaken for an up-to-date one)."""
    digest = hashlib.sha256()
    for module in (
        "card",
        "gguf_source",
        "graph_builder",
        "onnx_writer",
        "prepare",
        "tokenizer_builder",
        "weights",
    ):
        digest.update((Path(__file__).parent / f"{module}.py").read_bytes())
    return f"1.{digest.hexdigest()[:12]}"


CONVERTER_VERSION = _converter_version()
DEFAULT_PRECISION: Precision = "int4"

# Control tokens that end a turn, as llama.cpp's end-of-generation list treats them.
END_OF_TURN_TEXTS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
)


@dataclass(frozen=True)
class PrepareRequest:
    gguf: Path | None  # None: the default model, fetched from PyPI
    name: str | None
    precision: Precision
    max_context: int | None
    out: Path | None


@dataclass(frozen=True)
class PrepareResult:
    model_dir: Path
    card: ModelCard
    converted: bool  # False when the directory was already up to date
    seconds: float


def default_name(path: Path) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", path.stem.lower()).strip("-") or "model"


def _guess_builtin_template(special: dict[str, int], tokenizer_model: str) -> str:
    if "<|im_start|>" in special:
        return "chatml"
    if "<|start_header_id|>" in special:
        return "llama-3"
    if "<start_of_turn>" in special:
        return "gemma"
    if "<|user|>" in special and "<|end|>" in special:
        return "phi-3"
    return "llama-2" if tokenizer_model == "llama" else "plain"


def _stop_token_ids(src: GGUFSource, special: dict[str, int], eos: int | None) -> list[int]:
    ids = {special[text] for text in END_OF_TURN_TEXTS if text in special}
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        value = src.value(key)
        if isinstance(value, int):
            ids.add(value)
    if eos is not None:
        ids.add(eos)
    return sorted(ids)


def _optional_id(src: GGUFSource, key: str) -> int | None:
    value = src.value(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def build_card(
    src: GGUFSource, special: dict[str, int], request: PrepareRequest, name: str, sha256: str, context: int
) -> ModelCard:
    spec = src.spec
    template = src.value("tokenizer.chat_template")
    tokenizer_model = str(src.value("tokenizer.ggml.model") or "")
    eos = _optional_id(src, "tokenizer.ggml.eos_token_id")
    add_bos = src.value("tokenizer.ggml.add_bos_token")
    return ModelCard(
        name=name,
        architecture=src.architecture,
        n_layers=spec.n_layers,
        hidden_size=spec.hidden_size,
        n_heads=spec.n_heads,
        n_kv_heads=spec.n_kv_heads,
        head_dim=spec.head_dim,
        ffn_size=spec.ffn_size,
        vocab_size=spec.vocab_size,
        context_window=context,
        train_context=spec.train_context,
        rope_theta=spec.rope_theta,
        rms_eps=spec.rms_eps,
        bos_token_id=_optional_id(src, "tokenizer.ggml.bos_token_id"),
        eos_token_id=eos,
        pad_token_id=_optional_id(src, "tokenizer.ggml.padding_token_id"),
        add_bos=bool(add_bos) if add_bos is not None else tokenizer_model == "llama",
        special_tokens=special,
        stop_token_ids=_stop_token_ids(src, special, eos),
        chat_template=template if isinstance(template, str) and template.strip() else None,
        builtin_template=None
        if isinstance(template, str) and template.strip()
        else _guess_builtin_template(special, tokenizer_model),
        precision=request.precision,
        source=SourceInfo(file_name=src.path.name, sha256=sha256, size_bytes=src.path.stat().st_size),
        converter_version=CONVERTER_VERSION,
        graph=GraphIO(kv_dtype="float16" if request.precision == "fp16" else "float32"),
    )


def _up_to_date(
    model_dir: Path, sha256: str, request: PrepareRequest, name: str, context: int
) -> ModelCard | None:
    if not (model_dir / CARD_FILE).is_file():
        return None
    try:
        card = load_card(model_dir)
    except ModelError:
        return None
    same = (
        card.source.sha256 == sha256
        and card.precision == request.precision
        and card.context_window == context
        and card.name == name
        and card.converter_version == CONVERTER_VERSION
        and (model_dir / card.graph.weights_file).is_file()
    )
    return card if same else None


def _convert(
    src: GGUFSource, request: PrepareRequest, card: ModelCard, workdir: Path, show_progress: bool
) -> None:
    io = card.graph
    asm = GraphAssembler(workdir / io.weights_file)
    try:
        graph = LlamaGraph(
            src, GraphOptions(precision=request.precision, max_context=card.context_window, io=io), asm
        )
        with tqdm(
            total=src.spec.n_layers,
            desc=f"converting {card.name} ({request.precision})",
            unit="layer",
            disable=not show_progress,
            file=sys.stderr,
        ) as bar:

            def advance(_layer: int) -> None:
                bar.update()

            graph.build(advance)
    finally:
        asm.close()
    model = asm.model(
        card.name, f"{card.name} converted by parley {CONVERTER_VERSION} from {card.source.file_name}"
    )
    onnx.save_model(model, workdir / io.file)


def _check_loads(workdir: Path, card: ModelCard) -> None:
    """Create an ONNX Runtime session once, so a graph ORT rejects never reaches the store."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(workdir / card.graph.file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types; any of them means an unusable graph
        raise ModelError(f"the converted graph does not load in ONNX Runtime: {exc}") from None


def prepare(
    request: PrepareRequest, *, show_progress: bool = True, check_graph: bool = True
) -> PrepareResult:
    started = time.monotonic()
    path = request.gguf if request.gguf is not None else fetch_packaged()
    src = GGUFSource(path)
    name = request.name or (DEFAULT_MODEL.name if request.gguf is None else default_name(path))
    model_dir = request.out or STORE / name
    context = request.max_context or src.spec.train_context
    if not 0 < context <= src.spec.train_context:
        raise ModelError(
            f"--max-context must be in [1, {src.spec.train_context}] for this model, got {context}"
        )
    sha256 = sha256_file(path)
    existing = _up_to_date(model_dir, sha256, request, name, context)
    if existing is not None:
        return PrepareResult(model_dir, existing, converted=False, seconds=time.monotonic() - started)

    tokenizer = build_tokenizer(src.reader)
    card = build_card(src, tokenizer.control_tokens, request, name, sha256, context)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=model_dir.parent, prefix=f".{model_dir.name}.tmp-"))
    try:
        _convert(src, request, card, workdir, show_progress)
        tokenizer.tokenizer.save(str(workdir / card.tokenizer_file))
        write_card(card, workdir)
        load_card(workdir)
        if check_graph:
            _check_loads(workdir, card)
        _publish(workdir)
        _replace_dir(workdir, model_dir)
    except OSError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise ModelError(f"no space left on the device while writing {model_dir}") from None
        raise ModelError(f"cannot write {model_dir}: {exc}") from None
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return PrepareResult(model_dir, card, converted=True, seconds=time.monotonic() - started)


def _replace_dir(new: Path, target: Path) -> None:
    """Swap `new` into place as `target`; the old directory (if any) is removed only after the swap."""
    if not target.exists():
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{int(time.time())}")
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _publish(workdir: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; a model directory is meant to be readable by all."""
    workdir.chmod(0o755)
    for entry in workdir.iterdir():
        entry.chmod(0o644)
