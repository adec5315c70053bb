"""`parley` command line: serve | prepare | chat | complete | bench."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from models.card import PRECISIONS
from service.config import DEFAULT_MODEL_DIR, DEVICES, ServerConfig, build_config
from service.engine.kernels import KERNEL_MODES
from service.errors import ParleyError

log = logging.getLogger("parley")


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


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over gRPC",
        description="Serve a model over gRPC. Every option can also come from its PARLEY_* environment "
        "variable (e.g. PARLEY_PORT, PARLEY_MAX_BATCH); an option on the command line wins.",
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, help="port (default 50051; 0 picks a free port, which is logged)")
    p.add_argument(
        "--model", dest="model_dir", type=Path, help=f"model directory (default {DEFAULT_MODEL_DIR})"
    )
    p.add_argument(
        "--template",
        metavar="NAME|FILE",
        help="chat template: a built-in name (chatml, llama-2, llama-3, mistral, zephyr, phi-3, gemma, "
        "plain) or a Jinja file; default: the model's own",
    )
    p.add_argument("--max-batch", type=int, help="sequences decoded together (default 8)")
    p.add_argument(
        "--kv-capacity", type=int, help="tokens per sequence (default: the model's context window)"
    )
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: every core)")
    p.add_argument("--device", choices=DEVICES, help="auto (default), cpu or cuda")
    p.add_argument(
        "--kernels",
        choices=KERNEL_MODES,
        help="Parley's CPU kernels (fp16 KV cache): auto (default: when built for this CPU), on (fail "
        "if not), off (ONNX Runtime's own kernels, fp32 KV cache)",
    )
    p.add_argument("--max-queued", type=int, help="requests waiting for a slot before refusing (default 256)")
    p.add_argument(
        "--grace-seconds", type=float, help="on SIGTERM, time running calls get to finish (default 10)"
    )
    p.add_argument(
        "--reject-special-token-text",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refuse messages that spell control tokens (e.g. <|im_end|>) instead of encoding them as text",
    )
    p.add_argument("--default-max-tokens", type=int, help="max_tokens when a request leaves it unset")
    p.add_argument(
        "--session-idle-seconds", type=float, help="how long finished K/V stays reusable (default 600)"
    )
    p.add_argument("--max-message-bytes", type=int, help="largest gRPC message (default 16 MiB)")
    p.add_argument(
        "--auto-prepare",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prepare the default model when it is missing (default on)",
    )


def _serve_config(ns: argparse.Namespace) -> ServerConfig:
    """Options given on the command line (the parser leaves the others None), over PARLEY_* variables."""
    given = {spec.name: getattr(ns, spec.name, None) for spec in dataclasses.fields(ServerConfig)}
    return build_config(given, os.environ)


def _ensure_default_model(config: ServerConfig) -> None:
    """`parley serve` on a fresh checkout: prepare the default model once (about half a minute)."""
    if (
        not config.uses_default_model
        or (config.model_dir / "model.json").is_file()
        or not config.auto_prepare
    ):
        return
    from models.prepare import PrepareRequest, prepare

    log.info("the default model is not prepared yet: preparing it into %s (once)", config.model_dir)
    prepare(
        PrepareRequest(gguf=None, name=None, precision="int4", max_context=None, out=None),
        show_progress=False,
    )


def _run_serve(ns: argparse.Namespace) -> int:
    from service.server.app import serve

    config = _serve_config(ns)
    _ensure_default_model(config)
    return asyncio.run(serve(config))


DEFAULT_TARGET = "127.0.0.1:50051"


def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help=f"server address (default: $PARLEY_TARGET or {DEFAULT_TARGET})")
    p.add_argument("--model", default="", help="model name (default: the server's default model)")
    p.add_argument("--temperature", type=float, help="0 is greedy (default: the server's, 1.0)")
    p.add_argument("--max-tokens", type=int, help="most tokens per reply")
    p.add_argument("--seed", type=int, help="seed for reproducible sampling")
    p.add_argument("--stop", action="append", help="a stop string (repeatable)")
    p.add_argument("--timeout", type=float, help="seconds per call (default: none)")


def _add_chat(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("chat", help="chat with a running server: one message, or a session on stdin")
    p.add_argument("message", nargs="?", help="one user message; without it, chat line by line (Ctrl-D ends)")
    p.add_argument("--system", default="", help="a system prompt")
    _add_client_options(p)


def _add_complete(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("complete", help="continue a raw prompt (no chat template) on a running server")
    p.add_argument("prompt", help="the prompt text, fed to the model as is")
    _add_client_options(p)


def _target(ns: argparse.Namespace) -> str:
    return str(ns.target or os.environ.get("PARLEY_TARGET") or DEFAULT_TARGET)


def _print_stream(texts: Iterable[str]) -> None:
    for text in texts:
        print(text, end="", flush=True)
    print()


def _run_chat(ns: argparse.Namespace) -> int:
    from parley_client import GenerationOptions, MessageLike, ParleyClient

    options: GenerationOptions = {
        "temperature": ns.temperature,
        "max_tokens": ns.max_tokens,
        "seed": ns.seed,
        "stop": ns.stop,
    }
    with ParleyClient(_target(ns), timeout=ns.timeout) as client:
        if ns.message is not None:
            messages: list[MessageLike] = [("system", ns.system)] if ns.system else []
            messages.append(("user", ns.message))
            chunks = client.stream_chat(messages, model=ns.model, **options)
            _print_stream(c.delta.content for chunk in chunks for c in chunk.choices)
            return 0
        with client.session(model=ns.model, system_prompt=ns.system, **options) as chat:
            while True:
                try:
                    line = input("> ")
                except EOFError:
                    print()
                    return 0
                if not line.strip():
                    continue
                turn = chat.send(line)
                try:
                    _print_stream(c.delta.content for chunk in turn for c in chunk.choices)
                except KeyboardInterrupt:  # Ctrl-C stops the reply, not the session
                    turn.cancel()
                    turn.result()
                    print(" [stopped]")


def _run_complete(ns: argparse.Namespace) -> int:
    from parley_client import ParleyClient

    with ParleyClient(_target(ns), timeout=ns.timeout) as client:
        chunks = client.stream_complete(
            ns.prompt,
            model=ns.model,
            temperature=ns.temperature,
            max_tokens=ns.max_tokens,
            seed=ns.seed,
            stop=ns.stop,
        )
        _print_stream(c.text for chunk in chunks for c in chunk.choices)
    return 0


def _run_client_command(ns: argparse.Namespace) -> int:
    from parley_client import ParleyRpcError

    try:
        return _run_chat(ns) if ns.command == "chat" else _run_complete(ns)
    except ParleyRpcError as error:
        hint = ""
        if error.code.name == "UNAVAILABLE":
            hint = f" (is `parley serve` running on {_target(ns)}?)"
        print(f"parley {ns.command}: error: {error}{hint}", file=sys.stderr)
        return 1


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser(
        "bench",
        help="benchmark beside llama.cpp (`parley bench --help` for its options)",
        add_help=False,  # --help goes to the benchmark's own parser
    )


def _run_bench(args: list[str]) -> int:
    from bench.run import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="Parley: chat completions over gRPC.")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_prepare(sub)
    _add_chat(sub)
    _add_complete(sub)
    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # numpy's OpenBLAS starts a busy-waiting thread per core after each BLAS call; ONNX Runtime needs
    # those cores, and our numpy work is small. Set before numpy loads (nothing above imports it).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra and ns.command != "bench":  # only the benchmark takes options of its own
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if ns.command == "serve":
            return _run_serve(ns)
        if ns.command == "prepare":
            return _run_prepare(ns)
        if ns.command in ("chat", "complete"):
            return _run_client_command(ns)
        if ns.command == "bench":
            return _run_bench(extra)
    except ParleyError as exc:
        print(f"parley {ns.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"parley {ns.command}: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {ns.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
