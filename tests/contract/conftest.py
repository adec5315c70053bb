"""A real gRPC server on 127.0.0.1:0 running the echo servicers, shared by the client tests of a module."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from parley.v1 import chat_service_pb2_grpc, model_service_pb2_grpc

from tests.contract.echo_servicer import EchoChatService, EchoModelService, EchoServer


@pytest.fixture(scope="module")
def echo_server() -> Iterator[EchoServer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    chat = EchoChatService()
    chat_service_pb2_grpc.add_ChatServiceServicer_to_server(chat, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(EchoModelService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield EchoServer(target=f"127.0.0.1:{port}", chat=chat)
    finally:
        server.stop(grace=None)
