"""ServerConfig: command line over environment over defaults, and errors that name the option."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import DEFAULT_MODEL_DIR, ServerConfig, build_config
from service.errors import InvalidArgument


def test_defaults_serve_the_default_model_on_loopback() -> None:
    config = build_config({}, {})
    assert config == ServerConfig()
    assert (config.host, config.port, config.model_dir) == ("127.0.0.1", 50051, DEFAULT_MODEL_DIR)
    assert config.address == "127.0.0.1:50051"
    assert config.uses_default_model


def test_command_line_wins_over_environment_over_defaults() -> None:
    environ = {"PARLEY_PORT": "6000", "PARLEY_MAX_BATCH": "2", "PARLEY_REJECT_SPECIAL_TOKEN_TEXT": "yes"}
    config = build_config({"port": 7000, "max_batch": None, "model_dir": Path("/models/x")}, environ)
    assert config.port == 7000
    assert config.max_batch == 2
    assert config.reject_special_token_text is True
    assert config.model_dir == Path("/models/x")
    assert not config.uses_default_model


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PARLEY_PORT": "fifty"}, "PARLEY_PORT: cannot be parsed"),
        ({"PARLEY_AUTO_PREPARE": "maybe"}, "PARLEY_AUTO_PREPARE: cannot be parsed: expected true/false"),
        ({"PARLEY_PORT": "70000"}, r"--port: must be in \[0, 65535\], got 70000"),
        ({"PARLEY_GRACE_SECONDS": "nan"}, "--grace-seconds: must be a finite number >= 0, got nan"),
        ({"PARLEY_DEVICE": "tpu"}, "--device: must be one of auto, cpu, cuda, got 'tpu'"),
        ({"PARLEY_KERNELS": "fast"}, "--kernels: must be one of auto, on, off, got 'fast'"),
    ],
    ids=["not_a_number", "not_a_bool", "port_range", "nan_grace", "device", "kernels"],
)
def test_bad_values_name_the_option(environ: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        build_config({}, environ)


def test_none_in_the_environment_means_the_default() -> None:
    config = build_config({}, {"PARLEY_KV_CAPACITY": "none", "PARLEY_THREADS": "4"})
    assert config.kv_capacity is None
    assert config.threads == 4


def test_ipv6_hosts_are_bracketed() -> None:
    assert ServerConfig(host="::1", port=1).address == "[::1]:1"
