"""The asyncio client against a real gRPC server (the echo servicers on 127.0.0.1:0)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from parley_client import AsyncParleyClient, FieldViolation, ParleyRpcError

from tests.contract.echo_servicer import CALL_TIMEOUT, EchoServer

# The project runs async fixtures on the session's loop (pyproject); the tests run there too.
pytestmark = pytest.mark.asyncio(loop_scope="session")

TEMPERATURE_VIOLATION = FieldViolation("temperature", "temperature must be in [0, 2], got 3")


@pytest.fixture
async def aclient(echo_server: EchoServer) -> AsyncIterator[AsyncParleyClient]:
    async with AsyncParleyClient(echo_server.target, timeout=CALL_TIMEOUT) as client:
        yield client


async def test_async_chat_and_error(aclient: AsyncParleyClient) -> None:
    reply = await aclient.chat([("user", "hi")], max_tokens=5)
    assert reply.choices[0].message.content == "echo: hi"
    with pytest.raises(ParleyRpcError, match="INVALID_ARGUMENT") as caught:
        await aclient.chat("hi", temperature=3.0)
    assert caught.value.field_violations == (TEMPERATURE_VIOLATION,)


async def test_async_deadline(aclient: AsyncParleyClient) -> None:
    with pytest.raises(ParleyRpcError, match="DEADLINE_EXCEEDED"):
        await aclient.chat("block", timeout=0.2)


async def test_async_stream_and_early_close(aclient: AsyncParleyClient, echo_server: EchoServer) -> None:
    texts = [c.choices[0].delta.content async for c in aclient.stream_chat("x y") if c.choices]
    assert texts == ["x", "y", ""]
    echo_server.chat.stream_cancelled.clear()
    stream = aclient.stream_chat("forever")
    assert (await anext(stream)).choices[0].delta.content == "forever"
    await stream.aclose()
    assert await asyncio.to_thread(echo_server.chat.stream_cancelled.wait, CALL_TIMEOUT)


async def test_async_model_calls(aclient: AsyncParleyClient) -> None:
    assert (await aclient.get_model()).name == "echo-1"
    assert list((await aclient.tokenize("hi")).tokens) == ["h", "i"]


async def test_async_session(aclient: AsyncParleyClient) -> None:
    async with aclient.session(model="m") as session:
        assert session.started is not None and session.started.session_id == "s-1"
        turn = await session.send("one two", request_id="t1")
        assert [c.choices[0].delta.content async for c in turn] == ["one", "two"]
        with pytest.raises(ParleyRpcError, match="INVALID_ARGUMENT: the echo server refuses"):
            await session.ask("fail")
        second = await session.ask("three")
        assert second.message.content == "echo: three" and second.usage.cached_tokens == 1
