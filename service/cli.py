"""`parley` command line: serve | prepare | chat | complete | bench."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from models.card import PRECISIONS
from service.errors import ModelError


def _add_prepare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("prepare", help="convert a GGUF chat model into a model directory")
    p.add_argument("gguf", nargs="?", type=Path, help="GGUF file (default: SmolLM2-135M-Instruct from PyPI)")
    p.add_argument("--name", help="model name (default: derived from the file name)")
    p.add_argument(
        "--precision", choices=PRECISIONS, default="int4", help="weight/activation precision (default int4)"
    )
    p.add_argument("--max-context", type=int, help="context window of the graph (default: the model's own)")
    p.add_argument("--out", type=Path, help="output directory (default: models/store/<name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_prepare(ns: argparse.Namespace) -> int:
    from models.prepare import PrepareRequest, prepare

    request = PrepareRequest(
        gguf=ns.gguf, name=ns.name, precision=ns.precision, max_context=ns.max_context, out=ns.out
    )
    result = prepare(request, show_progress=not ns.quiet)
    if result.converted:
        print(f"prepared {result.model_dir} ({result.card.precision}, {result.seconds:.1f} s)")
    else:
        print(f"{result.model_dir} is up to date (same source, options and converter); nothing to do")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="Parley: chat completions over gRPC.")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if ns.command == "prepare":
            return _run_prepare(ns)
    except ModelError as exc:
        print(f"parley {ns.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"parley {ns.command}: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {ns.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
