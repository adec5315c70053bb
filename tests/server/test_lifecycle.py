"""`parley serve` as a process: options from the command line, SIGTERM drains running calls and exits 0."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpc_health.v1.health_pb2_grpc import HealthStub
from parley.v1 import common_pb2
from parley_client import ParleyClient, ParleyRpcError

REPO = Path(__file__).resolve().parents[2]
SERVING_LINE = re.compile(r"serving \S+ on 127\.0\.0\.1:(\d+)")
STARTUP_TIMEOUT = 180.0


class ServerProcess:
    """`python -m service.cli serve ...` with its log lines read as they come."""

    def __init__(self, *args: str) -> None:
        command = [sys.executable, "-m", "service.cli", "--log-level", "INFO", "serve", "--port", "0", *args]
        self.process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        while (line := self.lines.get(timeout=STARTUP_TIMEOUT)) is not None:
            self.log.append(line)
            found = pattern.search(line)
            if found is not None:
                return found
        raise AssertionError(f"the server exited before logging {pattern.pattern!r}:\n{''.join(self.log)}")

    def finish(self, timeout: float = 60.0) -> int:
        code = self.process.wait(timeout=timeout)
        while (line := self.lines.get(timeout=10)) is not None:
            self.log.append(line)
        return code


@pytest.fixture
def small_server(default_model_dir: Path) -> Iterator[tuple[ServerProcess, str]]:
    server = ServerProcess(
        "--model", str(default_model_dir), "--kv-capacity", "128", "--max-batch", "2", "--threads", "2",
        "--reject-special-token-text", "--grace-seconds", "30",
    )  # fmt: skip
    try:
        port = server.wait_for(SERVING_LINE).group(1)
        yield server, f"127.0.0.1:{port}"
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=30)


def test_sigterm_drains_running_calls_and_exits_zero(small_server: tuple[ServerProcess, str]) -> None:
    server, target = small_server
    with grpc.insecure_channel(target) as channel, ParleyClient(target, timeout=60) as client:
        watch = HealthStub(channel).Watch(HealthCheckRequest(service=""), timeout=60)
        assert next(watch).status == HealthCheckResponse.SERVING
        stream = client.stream_chat("Tell me a story.", temperature=0, max_tokens=40, ignore_eos=True)
        first = next(stream)
        server.process.send_signal(signal.SIGTERM)
        assert next(watch).status == HealthCheckResponse.NOT_SERVING
        rest = list(stream)  # the running call finishes within the grace period
    assert first.choices
    final = rest[-1]
    assert final.usage.completion_tokens == 40
    assert [c.finish_reason for chunk in rest for c in chunk.choices if c.finish_reason] == [
        common_pb2.FINISH_REASON_LENGTH
    ]
    assert server.finish() == 0
    assert any("SIGTERM: draining" in line for line in server.log)


def test_command_line_options_reach_the_server(small_server: tuple[ServerProcess, str]) -> None:
    server, target = small_server
    with ParleyClient(target, timeout=60) as client:
        assert client.get_model().context_window == 128
        with pytest.raises(ParleyRpcError, match="control token") as caught:  # --reject-special-token-text
            client.chat("Hi <|im_end|>", max_tokens=1)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in caught.value.field_violations] == ["messages[0].content"]
    server.process.send_signal(signal.SIGINT)
    assert server.finish() == 0


def test_a_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", "0", "--model", str(tmp_path / "nowhere")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "not a model directory" in result.stderr
    assert "parley prepare" in result.stderr


def test_a_bad_option_names_itself(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--max-batch", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "--max-batch: must be >= 1, got 0" in result.stderr
