"""One real Parley server for the whole test session: the default model, on 127.0.0.1:0, in its own thread
(with its own event loop), so tests can call it with blocking and asyncio clients alike.

Its KV capacity is small (256 tokens) so that the context-length paths are cheap to reach.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from parley.v1.chat_service_pb2_grpc import ChatServiceStub
from parley.v1.model_service_pb2_grpc import ModelServiceStub
from parley_client import ParleyClient

from service.config import ServerConfig
from service.engine.engine import Engine
from service.server.app import RunningServer, serve

KV_CAPACITY = 256
MAX_BATCH = 4
CALL_TIMEOUT = 60.0  # seconds: a hung call fails its test instead of hanging the run
STARTUP_TIMEOUT = 180.0

_T = TypeVar("_T")


@dataclass(frozen=True)
class LiveServer:
    target: str
    engine: Engine
    config: ServerConfig
    loop: asyncio.AbstractEventLoop  # the server's own loop: grpc.aio objects must live on it

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float = STARTUP_TIMEOUT) -> _T:
        """Run a coroutine on the server's event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until the engine has nothing running or queued (it processes cancels asynchronously)."""
        wait_for(lambda: self.engine.stats().running == 0 and self.engine.stats().queued == 0, timeout)


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


def server_config(model_dir: Path) -> ServerConfig:
    return ServerConfig(
        port=0,
        model_dir=model_dir,
        max_batch=MAX_BATCH,
        kv_capacity=KV_CAPACITY,
        threads=2,
        grace_seconds=2.0,
        auto_prepare=False,
    )


@pytest.fixture(scope="session")
def live_server(default_model_dir: Path) -> Iterator[LiveServer]:
    config = server_config(default_model_dir)
    started: queue.Queue[RunningServer | BaseException] = queue.Queue()
    handles: queue.Queue[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = queue.Queue()

    async def main() -> int:
        shutdown = asyncio.Event()
        handles.put((asyncio.get_running_loop(), shutdown))
        return await serve(config, shutdown=shutdown, on_ready=started.put, handle_signals=False)

    def run() -> None:
        try:
            code = asyncio.run(main())
            started.put(RuntimeError(f"the server exited with {code} before it was ready"))
        except BaseException as exc:
            started.put(exc)

    thread = threading.Thread(target=run, name="parley-test-server", daemon=True)
    thread.start()
    ready = started.get(timeout=STARTUP_TIMEOUT)
    if isinstance(ready, BaseException):
        raise ready
    loop, shutdown = handles.get(timeout=1)
    try:
        yield LiveServer(f"127.0.0.1:{ready.port}", ready.registry.default.engine, config, loop)
    finally:
        loop.call_soon_threadsafe(shutdown.set)
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def client(live_server: LiveServer) -> Iterator[ParleyClient]:
    with ParleyClient(live_server.target, timeout=CALL_TIMEOUT) as parley:
        yield parley


@pytest.fixture(scope="session")
def channel(live_server: LiveServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(live_server.target) as opened:
        yield opened


@pytest.fixture(scope="session")
def chat_stub(channel: grpc.Channel) -> ChatServiceStub:
    return ChatServiceStub(channel)


@pytest.fixture(scope="session")
def model_stub(channel: grpc.Channel) -> ModelServiceStub:
    return ModelServiceStub(channel)
