"""The asyncio Chat session: AsyncChatSession over one grpc.aio bidirectional call, AsyncSessionTurn for
one turn."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Self, Unpack

import grpc
from grpc import aio
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


class AsyncChatSession:
    """A conversation kept on the server, over grpc.aio. Use it from one task at a time."""

    def __init__(
        self,
        chat: aio.StreamStreamMultiCallable[ChatSessionRequest, ChatSessionResponse],
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
        self._router = ResponseRouter()
        self._call: aio.StreamStreamCall[ChatSessionRequest, ChatSessionResponse] | None = None
        self._opened = False
        self.started: SessionStarted | None = None

    def _open_call(self) -> aio.StreamStreamCall[ChatSessionRequest, ChatSessionResponse]:
        if self._call is None:
            raise ParleyError("the session is not open: use `async with client.session(...)` or open()")
        return self._call

    async def open(self) -> SessionStarted:
        """Send `start` and wait for the server's `started`. A session opens once."""
        if self._opened:
            raise ParleyError("the session was already opened; start a new one with client.session()")
        self._opened = True
        self._call = self._chat(
            None,  # requests are written with call.write()
            timeout=self._timeout,
            metadata=self._settings.call_metadata(self._metadata),
            wait_for_ready=self._settings.wait_for_ready,
        )
        await self._write(self._start)
        self.started = started_event(await self._next_for(SESSION_KEY))
        return self.started

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            await self.close()
        else:
            self.abort()

    async def _write(self, request: ChatSessionRequest) -> None:
        try:
            await self._open_call().write(request)
        except grpc.RpcError as error:
            raise error_from_rpc_error(error) from error

    async def _next_for(self, request_id: str) -> ChatSessionResponse:
        buffered = self._router.take(request_id)
        if buffered is not None:
            return buffered
        call = self._open_call()
        while True:
            try:
                response = await call.read()
            except grpc.RpcError as error:
                raise error_from_rpc_error(error) from error
            if not isinstance(response, ChatSessionResponse):  # aio.EOF: the server ended the call
                raise SessionEndedError(f"the session ended before turn {request_id!r} finished")
            if self._router.accept(response, request_id):
                return response

    async def send(
        self,
        messages: Iterable[MessageLike] | str,
        *,
        request_id: str = "",
        **params: Unpack[GenerationOptions],
    ) -> AsyncSessionTurn:
        """As ChatSession.send; iterate the turn with `async for`."""
        request_id = request_id or new_request_id()
        params_message = build_generation_params(**params)
        await self._write(user_request(messages, request_id=request_id, params=params_message))
        return AsyncSessionTurn(self, request_id)

    async def ask(
        self, messages: Iterable[MessageLike] | str, **params: Unpack[GenerationOptions]
    ) -> SessionDone:
        """As ChatSession.ask."""
        return await (await self.send(messages, **params)).result()

    async def cancel(self, request_id: str = "") -> None:
        """As ChatSession.cancel."""
        await self._write(cancel_request(request_id))

    async def close(self) -> None:
        """Half-close and wait for the server to finish the turns already sent."""
        if self._call is None:
            return
        call, self._call = self._call, None
        try:
            await call.done_writing()
            # read() until EOF (not `async for`: gRPC forbids mixing the two styles on one call).
            while isinstance(await call.read(), ChatSessionResponse):
                pass
        except grpc.RpcError as error:
            raise error_from_rpc_error(error) from error

    def abort(self) -> None:
        """End the session at once: the server cancels whatever is running."""
        if self._call is not None:
            self._call.cancel()
            self._call = None


class AsyncSessionTurn:
    """One turn of an AsyncChatSession: `async for` its chunks; `await result()` for its `done`."""

    def __init__(self, session: AsyncChatSession, request_id: str) -> None:
        self._session = session
        self.request_id = request_id
        self.done: SessionDone | None = None
        self.error: ParleyRpcError | None = None

    async def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        while self.done is None:
            if self.error is not None:  # a failed turn gets no more responses: fail again, never block
                raise self.error
            try:
                event = turn_event(await self._session._next_for(self.request_id), self.request_id)
            except ParleyRpcError as error:
                self.error = error
                raise
            if isinstance(event, SessionDone):
                self.done = event
            else:
                yield event

    async def result(self) -> SessionDone:
        """Read the turn to its end and return its `done` (raises ParleyRpcError if the turn failed)."""
        async for _ in self:
            pass
        assert self.done is not None  # the loop above ends only once `done` arrived
        return self.done

    async def cancel(self) -> None:
        """Cancel this turn; keep reading it to see its `done`."""
        await self._session.cancel(self.request_id)
