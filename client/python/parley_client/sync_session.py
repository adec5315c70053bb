"""The synchronous Chat session: ChatSession over one bidirectional call, and SessionTurn for one turn."""

from __future__ import annotations

import queue
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Self, Unpack

import grpc
from parley.v1.chat_pb2 import ChatCompletionChunk
from parley.v1.session_pb2 import ChatSessionRequest, ChatSessionResponse, SessionDone, SessionStarted

from parley_client.call_settings import CallSettings, MetadataLike
from parley_client.errors import ParleyError, ParleyRpcError, SessionEndedError, error_from_rpc_error
from parley_client.messages import MessageLike
from parley_client.options import GenerationOptions, build_generation_params
from parley_client.session import (
    SESSION_KEY,
    ResponseRouter,
    cancel_request,
    new_request_id,
    started_event,
    turn_event,
    user_request,
)


class ChatSession:
    """A conversation kept on the server. Not thread-safe: use one session from one thread.

    with client.session(system_prompt="Be brief.", temperature=0) as chat:
        print(chat.ask("Hi!").message.content)
        for chunk in chat.send("And then?"):
            print(chunk.choices[0].delta.content, end="")
    """

    def __init__(
        self,
        chat: grpc.StreamStreamMultiCallable[ChatSessionRequest, ChatSessionResponse],
        settings: CallSettings,
        start: ChatSessionRequest,
        *,
        timeout: float | None,
        metadata: MetadataLike,
    ) -> None:
        self._chat = chat
        self._settings = settings
        self._start = start
        self._timeout = timeout
        self._metadata = metadata
        # Requests go through a queue that gRPC's sender thread drains; None half-closes the stream.
        self._outbox: queue.Queue[ChatSessionRequest | None] = queue.Queue()
        self._router = ResponseRouter()
        self._responses: Iterator[ChatSessionResponse] | None = None
        self._call: grpc.Call | None = None
        self.started: SessionStarted | None = None

    def open(self) -> SessionStarted:
        """Send `start` and wait for the server's `started`. A session opens once."""
        if self._call is not None:
            raise ParleyError("the session was already opened; start a new one with client.session()")
        self._outbox.put(self._start)
        call = self._chat(
            iter(self._outbox.get, None),
            timeout=self._timeout,
            metadata=self._settings.call_metadata(self._metadata),
            wait_for_ready=self._settings.wait_for_ready,
        )
        self._responses, self._call = iter(call), call
        self.started = started_event(self._next_for(SESSION_KEY))
        return self.started

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.abort()

    def _next_for(self, request_id: str) -> ChatSessionResponse:
        buffered = self._router.take(request_id)
        if buffered is not None:
            return buffered
        if self._responses is None:
            raise ParleyError("the session is not open: use `with client.session(...)` or open()")
        while True:
            try:
                response = next(self._responses)
            except StopIteration:
                raise SessionEndedError(f"the session ended before turn {request_id!r} finished") from None
            except grpc.RpcError as error:
                raise error_from_rpc_error(error) from error
            if self._router.accept(response, request_id):
                return response

    def send(
        self,
        messages: Iterable[MessageLike] | str,
        *,
        request_id: str = "",
        **params: Unpack[GenerationOptions],
    ) -> SessionTurn:
        """Start a turn: append `messages` (a lone string is one user message) and let the model answer.
        `params` override the session's defaults for this turn. Iterate the turn for its chunks."""
        if self._responses is None:
            raise ParleyError("the session is not open: use `with client.session(...)` or open()")
        request_id = request_id or new_request_id()
        self._outbox.put(
            user_request(messages, request_id=request_id, params=build_generation_params(**params))
        )
        return SessionTurn(self, request_id)

    def ask(self, messages: Iterable[MessageLike] | str, **params: Unpack[GenerationOptions]) -> SessionDone:
        """Run one turn to its end; the reply is in `.message`, usage (with cached tokens) in `.usage`."""
        return self.send(messages, **params).result()

    def cancel(self, request_id: str = "") -> None:
        """Cancel a turn (default: the running one); it ends with FINISH_REASON_CANCELLED."""
        self._outbox.put(cancel_request(request_id))

    def close(self) -> None:
        """Half-close and wait for the server to finish the turns already sent."""
        if self._responses is None:
            return
        self._outbox.put(None)
        try:
            for _ in self._responses:
                pass
        except grpc.RpcError as error:
            raise error_from_rpc_error(error) from error
        finally:
            self._responses = None

    def abort(self) -> None:
        """End the session at once: the server cancels whatever is running."""
        if self._call is not None:
            self._call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves cancel() unannotated
        self._outbox.put(None)  # unblock gRPC's sender thread
        self._responses = None


class SessionTurn:
    """One turn of a ChatSession: iterate it for chunks; `result()` waits for its `done`."""

    def __init__(self, session: ChatSession, request_id: str) -> None:
        self._session = session
        self.request_id = request_id
        self.done: SessionDone | None = None
        self.error: ParleyRpcError | None = None

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        while self.done is None:
            if self.error is not None:  # a failed turn gets no more responses: fail again, never block
                raise self.error
            try:
                event = turn_event(self._session._next_for(self.request_id), self.request_id)
            except ParleyRpcError as error:
                self.error = error
                raise
            if isinstance(event, SessionDone):
                self.done = event
            else:
                yield event

    def result(self) -> SessionDone:
        """Read the turn to its end and return its `done` (raises ParleyRpcError if the turn failed)."""
        for _ in self:
            pass
        assert self.done is not None  # the loop above ends only once `done` arrived
        return self.done

    def cancel(self) -> None:
        """Cancel this turn; keep reading it to see its `done`."""
        self._session.cancel(self.request_id)
