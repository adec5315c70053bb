"""The sync client against a real gRPC server (the echo servicers on 127.0.0.1:0)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from parley.v1 import common_pb2
from parley_client import FieldViolation, ParleyClient, ParleyError, ParleyRpcError

from tests.contract.echo_servicer import CALL_TIMEOUT, EchoServer

TEMPERATURE_VIOLATION = FieldViolation("temperature", "temperature must be in [0, 2], got 3")


@pytest.fixture
def client(echo_server: EchoServer) -> Iterator[ParleyClient]:
    with ParleyClient(
        echo_server.target, timeout=CALL_TIMEOUT, metadata=[("x-client", "contract-tests")]
    ) as client:
        yield client


def test_chat_sends_the_built_request_and_metadata(client: ParleyClient, echo_server: EchoServer) -> None:
    reply = client.chat(
        [("system", "Be brief."), ("user", "hi")],
        model="m",
        temperature=0.0,
        seed=0,
        stop=["\n"],
        metadata=[("authorization", "Bearer token")],
    )
    assert reply.choices[0].message.content == "echo: hi"
    assert reply.choices[0].finish_reason == common_pb2.FINISH_REASON_STOP
    assert reply.model == "m"
    received = echo_server.chat.requests[-1]
    assert received.HasField("temperature") and received.temperature == 0.0
    assert received.HasField("seed") and not received.HasField("top_p")
    assert list(received.stop) == ["\n"]
    metadata = echo_server.chat.metadata[-1]
    assert metadata["authorization"] == "Bearer token" and metadata["x-client"] == "contract-tests"


def test_invalid_argument_surfaces_code_and_field_violations(client: ParleyClient) -> None:
    with pytest.raises(ParleyRpcError, match=r"INVALID_ARGUMENT: temperature must be in \[0, 2\]") as caught:
        client.chat("hi", temperature=3.0)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field_violations == (TEMPERATURE_VIOLATION,)
    assert (
        caught.value.status is not None
        and caught.value.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    )


def test_a_status_without_details_has_no_violations(client: ParleyClient) -> None:
    with pytest.raises(ParleyRpcError, match="UNIMPLEMENTED: completions are not part") as caught:
        client.complete("Once upon a time", max_tokens=4)
    assert caught.value.field_violations == () and caught.value.status is None


def test_the_deadline_reaches_the_server(client: ParleyClient) -> None:
    with pytest.raises(ParleyRpcError, match="DEADLINE_EXCEEDED") as caught:
        client.chat("block", timeout=0.2)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_stream_chat_yields_deltas_then_usage(client: ParleyClient) -> None:
    chunks = list(client.stream_chat("one two three"))
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "onetwothree"
    assert chunks[0].choices[0].delta.role != 0
    assert chunks[-1].choices[0].finish_reason == common_pb2.FINISH_REASON_STOP
    assert chunks[-1].HasField("usage") and chunks[-1].usage.completion_tokens == 3
    assert not any(c.HasField("usage") for c in chunks[:-1])


def test_closing_a_stream_early_cancels_the_call(client: ParleyClient, echo_server: EchoServer) -> None:
    echo_server.chat.stream_cancelled.clear()
    stream = client.stream_chat("forever")
    assert [next(stream).choices[0].delta.content for _ in range(2)] == ["forever", "forever"]
    stream.close()
    assert echo_server.chat.stream_cancelled.wait(timeout=CALL_TIMEOUT)


def test_model_service_calls(client: ParleyClient) -> None:
    assert client.get_model().context_window == 8192
    assert list(client.tokenize("abc").token_ids) == [97, 98, 99]
    with pytest.raises(ParleyRpcError, match="NOT_FOUND: no model named 'nope'"):
        client.get_model("nope")


def test_session_turns_report_cached_tokens_and_survive_a_failed_turn(client: ParleyClient) -> None:
    with client.session(model="m", system_prompt="Be brief.", temperature=0.0) as session:
        assert session.started is not None and session.started.model == "m"
        first = session.ask("hello there")
        assert first.message.content == "echo: hello there" and first.usage.cached_tokens == 0
        failed = session.send("fail")
        with pytest.raises(ParleyRpcError, match="refuses `fail`") as caught:
            failed.result()
        assert caught.value.field_violations[0].field == "messages[0].content"
        with pytest.raises(ParleyRpcError, match="refuses `fail`"):
            failed.result()  # again: raises at once instead of waiting for responses that never come
        turn = session.send("again now")
        assert [c.choices[0].delta.content for c in turn] == ["again", "now"]
        assert turn.done is not None and turn.done.usage.cached_tokens == 1


def test_session_turns_read_out_of_order_get_their_own_responses(client: ParleyClient) -> None:
    with client.session() as session:
        first, second = session.send("a b", request_id="t1"), session.send("c d", request_id="t2")
        assert [c.choices[0].delta.content for c in second] == ["c", "d"]
        assert [c.choices[0].delta.content for c in first] == ["a", "b"]
        assert first.result().message.content == "echo: a b"


def test_a_session_opens_once(client: ParleyClient) -> None:
    session = client.session()
    with session, pytest.raises(ParleyError, match="already opened"):
        session.open()
