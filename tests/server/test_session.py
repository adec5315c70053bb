"""The bidirectional Chat session against the real server: history kept on the server, cached prefixes,
cancellation, per-turn errors, and the protocol's edges (raw grpc.aio stream)."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator

import grpc
import pytest
from parley.v1 import common_pb2
from parley.v1.chat_service_pb2_grpc import ChatServiceStub
from parley.v1.session_pb2 import ChatSessionRequest, ChatSessionResponse, SessionStart
from parley_client import MessageLike, ParleyClient, ParleyRpcError, build_generation_params, message
from parley_client.session import cancel_request, user_request

from tests.server.conftest import KV_CAPACITY, LiveServer

CALL_TIMEOUT = 60.0
LONG = "Tell me a long story about a dragon."


def test_second_turn_reuses_the_cache_and_the_server_keeps_the_history(client: ParleyClient) -> None:
    with client.session(system_prompt="Be brief.", temperature=0, max_tokens=16) as chat:
        assert chat.started is not None
        assert chat.started.model == "smollm2-135m-instruct"
        assert chat.started.context_window == KV_CAPACITY
        assert chat.started.idle_timeout.seconds == 600
        first = chat.ask("What is the capital of France?")
        turn = chat.send("And of Italy?")
        streamed = "".join(c.delta.content for chunk in turn for c in chunk.choices)
        second = turn.result()
    assert streamed == second.message.content
    conversation: list[MessageLike] = [
        ("system", "Be brief."),
        ("user", "What is the capital of France?"),
        ("assistant", first.message.content),
        ("user", "And of Italy?"),
    ]
    assert second.usage.prompt_tokens == len(client.render_prompt(conversation).token_ids)
    # The whole first turn (its prompt, and its reply but the last token) was still in the KV cache.
    assert second.usage.cached_tokens >= first.usage.prompt_tokens
    assert second.usage.prompt_tokens - second.usage.cached_tokens < 20


def test_cancelling_the_running_turn_keeps_its_text(client: ParleyClient, live_server: LiveServer) -> None:
    with client.session(temperature=0) as chat:
        turn = chat.send(LONG, max_tokens=200, ignore_eos=True)
        chunks = iter(turn)
        first = next(chunks)
        turn.cancel()
        rest = list(chunks)
        done = turn.result()
        assert done.finish_reason == common_pb2.FINISH_REASON_CANCELLED
        assert 0 < done.usage.completion_tokens < 200
        streamed = "".join(c.delta.content for chunk in [first, *rest] for c in chunk.choices)
        assert done.message.content == streamed
        follow_up = chat.ask("Thanks.", max_tokens=1)
    expected: list[MessageLike] = [("user", LONG), ("assistant", done.message.content), ("user", "Thanks.")]
    assert follow_up.usage.prompt_tokens == len(client.render_prompt(expected).token_ids)
    live_server.wait_idle()


def test_cancelling_a_queued_turn_means_it_never_runs(client: ParleyClient) -> None:
    with client.session(temperature=0) as chat:
        running = chat.send(LONG, max_tokens=200, ignore_eos=True)
        queued = chat.send("Never mind.")
        chat.cancel(queued.request_id)
        running.cancel()
        assert running.result().finish_reason == common_pb2.FINISH_REASON_CANCELLED
        skipped = queued.result()
        assert skipped.finish_reason == common_pb2.FINISH_REASON_CANCELLED
        assert skipped.message.content == ""
        assert not skipped.HasField("usage")
        after = chat.ask("Hello!", max_tokens=1)
    # The skipped turn's message never joined the conversation. The running turn joined it with what it
    # generated before the cancel; cancelled before its first token, it left the conversation alone.
    reply = running.result().message.content
    expected: list[MessageLike] = [("user", LONG), ("assistant", reply)] if reply else []
    expected.append(("user", "Hello!"))
    assert after.usage.prompt_tokens == len(client.render_prompt(expected).token_ids)


def test_a_failed_turn_leaves_the_session_and_its_history_alone(client: ParleyClient) -> None:
    with client.session(temperature=0, max_tokens=4) as chat:
        with pytest.raises(ParleyRpcError, match="top_p") as caught:
            chat.ask("Hi!", top_p=2.0)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in caught.value.field_violations] == ["top_p"]
        done = chat.ask("Hello!")
    assert done.usage.prompt_tokens == len(client.render_prompt([("user", "Hello!")]).token_ids)


def test_a_request_id_is_used_once(client: ParleyClient) -> None:
    with client.session(max_tokens=1) as chat:
        chat.send("Hi", request_id="turn-a").result()
        with pytest.raises(ParleyRpcError, match="'turn-a' was already used") as caught:
            chat.send("Hi again", request_id="turn-a").result()
    assert [v.field for v in caught.value.field_violations] == ["user.request_id"]


def test_a_session_deadline_ends_the_turn_with_time_limit(
    client: ParleyClient, live_server: LiveServer
) -> None:
    chat = client.session(temperature=0, timeout=1.5)
    chat.open()
    try:
        done = chat.send(LONG, max_tokens=200, ignore_eos=True).result()
        assert done.finish_reason == common_pb2.FINISH_REASON_TIME_LIMIT
        assert 0 < done.usage.completion_tokens < 200
    finally:
        chat.abort()
    live_server.wait_idle()


def test_history_is_truncated_for_good_when_the_session_allows(client: ParleyClient) -> None:
    filler = "apples and pears " * 45  # about 135 tokens: two such turns overflow the 256-token window
    history: list[MessageLike] = [
        ("user", "First: " + filler),
        ("assistant", "Noted."),
        ("user", "Second: " + filler),
    ]
    history.append(("assistant", "Noted again."))
    with client.session(history=history, truncation="drop_oldest", temperature=0, max_tokens=4) as chat:
        first = chat.ask("What did I say last?")
        second = chat.ask("Thanks.")
    assert first.dropped_messages == 2
    assert second.dropped_messages == 0  # dropped for good in the turn before
    kept: list[MessageLike] = [
        *history[2:],
        ("user", "What did I say last?"),
        ("assistant", first.message.content),
    ]
    assert second.usage.prompt_tokens == len(client.render_prompt([*kept, ("user", "Thanks.")]).token_ids)


# --- the protocol, on a raw stream ---------------------------------------------------------------------
# Blocking stubs: grpc.aio objects belong to one event loop per process, and the server has that one.
class RawSession:
    """One Chat call driven message by message."""

    def __init__(self, stub: ChatServiceStub) -> None:
        self._outbox: queue.Queue[ChatSessionRequest | None] = queue.Queue()
        self.call = stub.Chat(iter(self._outbox.get, None), timeout=CALL_TIMEOUT)
        self._responses: Iterator[ChatSessionResponse] = iter(self.call)

    def write(self, request: ChatSessionRequest) -> None:
        self._outbox.put(request)

    def read(self) -> ChatSessionResponse:
        return next(self._responses)

    def read_turn(self) -> list[str]:
        """The kinds of responses up to and including the turn's done or error."""
        kinds: list[str] = []
        while not kinds or kinds[-1] not in ("done", "error"):
            kinds.append(str(self.read().WhichOneof("kind")))
        return kinds

    def finish(self) -> tuple[list[ChatSessionResponse], grpc.StatusCode]:
        """Half-close; the responses left and the call's status."""
        self._outbox.put(None)
        rest: list[ChatSessionResponse] = []
        with contextlib.suppress(grpc.RpcError):
            rest.extend(self._responses)
        return rest, self.call.code()


def test_a_first_user_message_starts_the_session(chat_stub: ChatServiceStub) -> None:
    session = RawSession(chat_stub)
    session.write(user_request("Hi!", request_id="t1", params=build_generation_params(max_tokens=2)))
    assert session.read().WhichOneof("kind") == "started"
    kinds = session.read_turn()
    assert kinds[0] == "chunk" and kinds[-1] == "done"
    assert session.finish() == ([], grpc.StatusCode.OK)


def test_a_second_start_is_refused_and_the_session_goes_on(chat_stub: ChatServiceStub) -> None:
    session = RawSession(chat_stub)
    session.write(ChatSessionRequest(start=SessionStart()))
    assert session.read().WhichOneof("kind") == "started"
    session.write(ChatSessionRequest(start=SessionStart()))
    refused = session.read()
    assert refused.request_id == ""
    assert refused.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    session.write(cancel_request("no-such-turn"))  # ignored
    session.write(ChatSessionRequest())  # nothing set: an error, the session lives on
    assert session.read().error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    session.write(user_request("Hi!", request_id="t1", params=build_generation_params(max_tokens=1)))
    assert session.read_turn()[-1] == "done"
    assert session.finish() == ([], grpc.StatusCode.OK)


@pytest.mark.parametrize(
    ("start", "code"),
    [
        (SessionStart(model="gpt-9"), grpc.StatusCode.NOT_FOUND),
        (SessionStart(defaults=build_generation_params(temperature=5.0)), grpc.StatusCode.INVALID_ARGUMENT),
        (SessionStart(system_prompt="a", history=[message("system", "b")]), grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["unknown_model", "bad_defaults", "two_system_prompts"],
)
def test_a_start_that_cannot_open_ends_the_call(
    chat_stub: ChatServiceStub, start: SessionStart, code: grpc.StatusCode
) -> None:
    session = RawSession(chat_stub)
    session.write(ChatSessionRequest(start=start))
    assert session.finish() == ([], code)


def test_an_empty_reply_leaves_the_conversation_alone(client: ParleyClient) -> None:
    """An assistant message without content is invalid for the next turn, so a turn that produced no
    text (here: the end-of-turn token forced first) does not join the conversation."""
    with client.session(temperature=0) as chat:
        empty = chat.ask("Say nothing.", logit_bias={2: 100.0}, max_tokens=4)
        assert empty.message.content == ""
        assert empty.finish_reason == common_pb2.FINISH_REASON_STOP
        after = chat.ask("Hello!", max_tokens=1)
    assert after.usage.prompt_tokens == len(client.render_prompt([("user", "Hello!")]).token_ids)
