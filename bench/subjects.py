"""The three subjects, on the same GGUF and the same token ids: Parley over gRPC (a real server process
on loopback, the Python client), Parley's engine in-process, and llama.cpp (llama-cpp-python in its own
environment, as a worker process). Each streams greedy completions of a prompt given as token ids."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from parley_client import AsyncParleyClient
from tokenizers import Tokenizer

from bench.timing import StreamTiming
from service.engine.async_engine import AsyncEngine
from service.engine.engine import Engine
from service.engine.events import GenerationRequest, RequestFailed, RequestFinished, TokenEvent
from service.engine.factory import create_runner
from service.engine.runner import RunnerOptions
from service.sampling import SamplingParams

REPO = Path(__file__).resolve().parent.parent
LLAMACPP_PYTHON = REPO / "bench" / ".venv-llamacpp" / "bin" / "python"
_ids = itertools.count()


@dataclass(frozen=True)
class BenchModel:
    model_dir: Path
    gguf: Path
    max_batch: int
    kv_capacity: int
    threads: int


class Subject(Protocol):
    name: str

    async def stream(self, prompt: Sequence[int], max_tokens: int) -> StreamTiming: ...
    def peak_rss(self) -> int | None: ...
    async def close(self) -> None: ...


def _peak_rss_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GrpcSubject:
    """`parley serve` in its own process; the bench talks to it like any client would."""

    name = "parley-grpc"

    def __init__(self, model: BenchModel) -> None:
        self.port = _free_port()
        self.target = f"127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "service.cli", "--log-level", "WARNING", "serve", "--host", "127.0.0.1",
            "--port", str(self.port), "--model", str(model.model_dir), "--max-batch", str(model.max_batch),
            "--kv-capacity", str(model.kv_capacity), "--threads", str(model.threads),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.client: AsyncParleyClient | None = None

    async def start(self, within_s: float = 180.0) -> None:
        deadline = time.monotonic() + within_s
        async with grpc.aio.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    stderr = self.process.stderr.read() if self.process.stderr else ""
                    raise RuntimeError(f"parley serve exited with {self.process.returncode}: {stderr}")
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("parley serve did not become SERVING in time")
                await asyncio.sleep(0.1)
        self.client = AsyncParleyClient(self.target)

    async def stream(self, prompt: Sequence[int], max_tokens: int) -> StreamTiming:
        assert self.client is not None
        submitted = time.monotonic()
        times: list[float] = []
        cached = 0
        generated = 0
        text: list[str] = []
        async for chunk in self.client.stream_complete(
            list(prompt), max_tokens=max_tokens, temperature=0.0, ignore_eos=True
        ):
            if chunk.choices:  # the server sends a chunk per generated token (text may be empty)
                times.append(time.monotonic())
                text.extend(c.text for c in chunk.choices)
            if chunk.HasField("usage"):
                cached, generated = chunk.usage.cached_tokens, chunk.usage.completion_tokens
        # A finishing chunk may carry the last token: count by usage, the chunks give the times.
        times = (times + [times[-1]] * generated)[:generated] if times else []
        return StreamTiming(submitted, tuple(times), cached, "".join(text))

    def peak_rss(self) -> int | None:
        return _peak_rss_of(self.process.pid)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


class EngineSubject:
    """The engine in this process: what the server adds on top of it is the gRPC subject's difference."""

    name = "parley-engine"

    def __init__(self, model: BenchModel) -> None:
        runner = create_runner(
            model.model_dir,
            RunnerOptions(max_batch=model.max_batch, kv_capacity=model.kv_capacity, threads=model.threads),
        )
        self.vocab = runner.card.vocab_size
        tokenizer = Tokenizer.from_file(str(model.model_dir / runner.card.tokenizer_file))
        self.engine = Engine(runner, tokenizer)
        self.engine.start()
        self.async_engine = AsyncEngine(self.engine)

    async def stream(self, prompt: Sequence[int], max_tokens: int) -> StreamTiming:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True).validated(
            vocab_size=self.vocab
        )
        request = GenerationRequest(f"bench-{next(_ids)}", tuple(prompt), params)
        submitted = time.monotonic()
        times: list[float] = []
        cached = 0
        text: list[str] = []
        async for event in self.async_engine.generate(request):
            if isinstance(event, TokenEvent):
                times.append(time.monotonic())
                text.append(event.text)
            elif isinstance(event, RequestFinished):
                cached = event.usage.cached_tokens
            elif isinstance(event, RequestFailed):
                raise RuntimeError(f"engine request failed: {event.error}")
        return StreamTiming(submitted, tuple(times), cached, "".join(text))

    def peak_rss(self) -> int | None:
        return None  # shares this process with the bench itself

    async def close(self) -> None:
        self.engine.stop()


class LlamaCppSubject:
    """llama-cpp-python in its own environment (bench/setup_llamacpp.sh builds it)."""

    name = "llama.cpp"

    def __init__(self, model: BenchModel) -> None:
        self.model = model
        self.process: asyncio.subprocess.Process | None = None
        self.version = ""
        self._lock = asyncio.Lock()

    @staticmethod
    def available() -> str | None:
        """None when usable, else why not."""
        if not LLAMACPP_PYTHON.is_file():
            return f"{LLAMACPP_PYTHON} is missing: run bench/setup_llamacpp.sh (about 6-13 minutes)"
        return None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            str(LLAMACPP_PYTHON), str(REPO / "bench" / "llamacpp_worker.py"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": ""},
        )  # fmt: skip
        reply = await self._call(
            {
                "op": "load",
                "gguf": str(self.model.gguf),
                "n_ctx": self.model.kv_capacity,
                "threads": self.model.threads,
            }
        )
        self.version = str(reply.get("version", ""))

    async def _call(self, command: dict[str, object]) -> dict[str, object]:
        assert self.process is not None and self.process.stdin is not None and self.process.stdout is not None
        async with self._lock:  # one request at a time, like llama-cpp-python itself
            self.process.stdin.write((json.dumps(command) + "\n").encode())
            await self.process.stdin.drain()
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError("the llama.cpp worker exited")
        reply: dict[str, object] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"llama.cpp worker: {reply['error']}")
        return reply

    async def stream(self, prompt: Sequence[int], max_tokens: int) -> StreamTiming:
        submitted = time.monotonic()
        reply = await self._call(
            {
                "op": "generate",
                "id": str(next(_ids)),
                "prompt": list(prompt),
                "max_tokens": max_tokens,
                "submitted": submitted,
            }
        )
        times = reply["token_times"]
        assert isinstance(times, list)
        cached = reply.get("cached", 0)
        return StreamTiming(
            submitted,
            tuple(float(t) for t in times),
            cached if isinstance(cached, int) else 0,
            str(reply.get("text", "")),
        )

    async def graph(self, prompt: Sequence[int], steps: int) -> tuple[float, list[float]]:
        """llama.cpp's model alone: prefill seconds for `prompt`, then seconds per single-token step."""
        reply = await self._call({"op": "graph", "prompt": list(prompt), "steps": steps})
        prefill, decode = reply["prefill_s"], reply["decode_s"]
        assert isinstance(prefill, float) and isinstance(decode, list)
        return prefill, [float(x) for x in decode]

    def peak_rss(self) -> int | None:
        return None if self.process is None else _peak_rss_of(self.process.pid)

    async def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()  # type: ignore[union-attr]
            await self.process.wait()
