"""The gRPC server: our two services, standard health checking and reflection, and the lifecycle.

Lifecycle: load the model -> listen (health NOT_SERVING) -> warm the engine up -> SERVING -> on SIGTERM or
SIGINT: NOT_SERVING -> server.stop(grace): new calls are refused, running ones get `grace` seconds -> the
engine stops -> exit 0. A second signal while draining cuts the grace period short.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from parley.v1 import chat_service_pb2, chat_service_pb2_grpc, model_service_pb2, model_service_pb2_grpc

from service.config import ServerConfig
from service.errors import FailedPrecondition
from service.server.chat import ChatService
from service.server.models import ModelService
from service.server.served_model import ModelRegistry, ServedModel

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    chat_service_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name,
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
)
# A long unary call sends nothing until it ends: the server pings the connection every KEEPALIVE_TIME so
# clients and middleboxes see it alive (and a dead peer is noticed), and it accepts client pings as often
# as CLIENT_PING_INTERVAL even on a connection with no call, so clients may enable keepalive too.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
CLIENT_PING_INTERVAL_MS = 10_000

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def server_options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_pings_without_data", 0),  # server pings need no data in flight
    ]


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    registry: ModelRegistry

    async def set_serving(self, serving: bool) -> None:
        status = _SERVING if serving else _NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)


async def start_server(config: ServerConfig, registry: ModelRegistry) -> RunningServer:
    """Listen on config.address with every service registered; health NOT_SERVING until set_serving."""
    server = grpc.aio.server(options=server_options(config))
    chat_service_pb2_grpc.add_ChatServiceServicer_to_server(ChatService(registry), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(registry), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    try:
        port = server.add_insecure_port(config.address)
    except RuntimeError as exc:
        raise FailedPrecondition(f"cannot listen on {config.address}: {exc}") from None
    running = RunningServer(server, port, health, registry)
    await running.set_serving(False)
    await server.start()
    return running


def _install_signal_handlers(shutdown: asyncio.Event, hurry: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if shutdown.is_set():
            log.warning("%s again: stopping without waiting for running calls", signal.Signals(signum).name)
            hurry()
        else:
            log.info("%s: draining", signal.Signals(signum).name)
            shutdown.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def serve(
    config: ServerConfig,
    *,
    shutdown: asyncio.Event | None = None,
    on_ready: Callable[[RunningServer], None] | None = None,
    handle_signals: bool = True,
) -> int:
    """Run the server until `shutdown` is set (or SIGTERM/SIGINT); the process's exit code."""
    shutdown = shutdown or asyncio.Event()
    model = await asyncio.to_thread(ServedModel.load, config)
    running = await start_server(config, ModelRegistry([model]))
    stopping: list[asyncio.Task[None]] = []
    if handle_signals:
        _install_signal_handlers(
            shutdown, lambda: stopping.append(asyncio.create_task(running.server.stop(0)))
        )
    log.info("listening on %s:%d; warming up %s", config.host, running.port, model.name)
    warm_up = asyncio.create_task(asyncio.to_thread(model.warm_up))
    stop_wait = asyncio.create_task(shutdown.wait())
    code = 0
    try:
        await asyncio.wait((warm_up, stop_wait), return_when=asyncio.FIRST_COMPLETED)
        if warm_up.done() and warm_up.exception() is not None:
            log.error("warm-up failed: %s", warm_up.exception())
            code = 1
        elif warm_up.done():
            await running.set_serving(True)
            log.info(
                "serving %s on %s:%d (context window %d; KV cache %s)",
                model.name,
                config.host,
                running.port,
                model.context_window,
                model.engine.runner.kv_shape,
            )
            if on_ready is not None:
                on_ready(running)
            await stop_wait
    finally:
        stop_wait.cancel()
        await running.health.enter_graceful_shutdown()
        await running.server.stop(config.grace_seconds)
        await asyncio.gather(*stopping, return_exceptions=True)
        await asyncio.gather(warm_up, return_exceptions=True)  # a thread cannot be interrupted: let it end
        await asyncio.to_thread(model.stop)
        log.info("stopped")
    return code
