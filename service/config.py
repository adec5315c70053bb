"""The server's configuration: one frozen object built at start from the command line and the environment.

Precedence: a command-line option, else its `PARLEY_*` environment variable, else the default. Nothing
below the CLI reads the environment; everything takes a `ServerConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from models.fetch import DEFAULT_MODEL, STORE
from service.engine.kernels import KERNEL_MODES, KernelMode
from service.errors import InvalidArgument

DEFAULT_MODEL_DIR = STORE / DEFAULT_MODEL.name
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)
ENV_PREFIX = "PARLEY_"
MIB = 1 << 20

_T = TypeVar("_T")


@dataclass(frozen=True)
class ServerConfig:
    """Everything `parley serve` can be told. Sizes in tokens unless named otherwise."""

    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (the bound port is logged)
    model_dir: Path = DEFAULT_MODEL_DIR
    template: str | None = None  # a built-in name, a Jinja file or Jinja source; None: the model's own
    max_batch: int = 8  # sequences decoded together (KV slots)
    kv_capacity: int | None = None  # tokens per KV slot; None: the model's context window
    threads: int | None = None  # ONNX Runtime intra-op threads; None: every available core
    device: Device = "auto"  # auto: CUDA when a GPU is present and the model is fp16, else the CPU
    kernels: KernelMode = "auto"  # Parley's CPU decode kernels (service/engine/kernels); auto: when built
    max_queued: int = 256  # requests waiting for a slot before RESOURCE_EXHAUSTED
    grace_seconds: float = 10.0  # on SIGTERM/SIGINT: how long in-flight calls may still run
    reject_special_token_text: bool = False  # refuse control-token text in messages instead of encoding it
    default_max_tokens: int | None = None  # cap when a request leaves max_tokens unset; None: the window
    session_idle_seconds: float = 600.0  # an idle session's (or finished request's) K/V stays reusable
    max_message_bytes: int = 16 * MIB  # largest request or response message
    auto_prepare: bool = True  # prepare the default model when its directory is missing

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "port", f"must be in [0, 65535], got {self.port}")
        _check(bool(self.host), "host", "must not be empty")
        _check(self.max_batch >= 1, "max_batch", f"must be >= 1, got {self.max_batch}")
        if self.kv_capacity is not None:
            _check(self.kv_capacity >= 2, "kv_capacity", f"must be >= 2, got {self.kv_capacity}")
        if self.threads is not None:
            _check(self.threads >= 1, "threads", f"must be >= 1, got {self.threads}")
        _check(self.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _check(
            self.kernels in KERNEL_MODES,
            "kernels",
            f"must be one of {', '.join(KERNEL_MODES)}, got {self.kernels!r}",
        )
        _check(self.max_queued >= 1, "max_queued", f"must be >= 1, got {self.max_queued}")
        _check(
            math.isfinite(self.grace_seconds) and self.grace_seconds >= 0,
            "grace_seconds",
            f"must be a finite number >= 0, got {self.grace_seconds}",
        )
        if self.default_max_tokens is not None:
            _check(
                self.default_max_tokens >= 1,
                "default_max_tokens",
                f"must be >= 1, got {self.default_max_tokens}",
            )
        _check(
            math.isfinite(self.session_idle_seconds) and self.session_idle_seconds > 0,
            "session_idle_seconds",
            f"must be a finite number > 0, got {self.session_idle_seconds}",
        )
        _check(
            self.max_message_bytes >= 64 * 1024,
            "max_message_bytes",
            f"must be at least 65536, got {self.max_message_bytes}",
        )

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    @property
    def uses_default_model(self) -> bool:
        return self.model_dir.resolve() == DEFAULT_MODEL_DIR.resolve()


def _check(condition: bool, name: str, reason: str) -> None:
    if not condition:
        raise InvalidArgument(option_name(name), reason)


def option_name(field_name: str) -> str:
    """The command-line spelling of a config field, e.g. `--max-batch` for `max_batch`."""
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    """The environment variable of a config field, e.g. `PARLEY_MAX_BATCH`."""
    return ENV_PREFIX + field_name.upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, 1/0, yes/no or on/off, got {text!r}")


def _optional(parse: Callable[[str], _T]) -> Callable[[str], _T | None]:
    def parse_optional(text: str) -> _T | None:
        return None if text.strip().lower() in ("", "none", "auto") else parse(text)

    return parse_optional


# How each field's environment variable is parsed (command-line values arrive already typed).
_ENV_PARSERS: dict[str, Callable[[str], Any]] = {
    "host": str,
    "port": int,
    "model_dir": Path,
    "template": _optional(str),
    "max_batch": int,
    "kv_capacity": _optional(int),
    "threads": _optional(int),
    "device": str,
    "kernels": str,
    "max_queued": int,
    "grace_seconds": float,
    "reject_special_token_text": _parse_bool,
    "default_max_tokens": _optional(int),
    "session_idle_seconds": float,
    "max_message_bytes": int,
    "auto_prepare": _parse_bool,
}


def build_config(options: Mapping[str, object], environ: Mapping[str, str]) -> ServerConfig:
    """The config from command-line `options` (field name -> value, None when not given) and `environ`.

    Raises InvalidArgument naming the option (or the environment variable) that is wrong.
    """
    values: dict[str, Any] = {}
    for spec in fields(ServerConfig):
        name = spec.name
        given = options.get(name)
        if given is not None:
            values[name] = given
            continue
        text = environ.get(env_name(name))
        if text is None:
            continue
        try:
            values[name] = _ENV_PARSERS[name](text)
        except ValueError as exc:
            raise InvalidArgument(env_name(name), f"cannot be parsed: {exc}") from None
    return ServerConfig(**values)
