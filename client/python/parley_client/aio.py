"""The asyncio client: AsyncParleyClient over a grpc.aio channel, and AsyncChatSession for Chat.

    async with AsyncParleyClient("127.0.0.1:50051") as client:
        async for chunk in client.stream_chat("Hello!", max_tokens=64):
            print(chunk.choices[0].delta.content if chunk.choices else "", end="")

Methods mirror ParleyClient's (same arguments, same ParleyRpcError on failure).
"""

# ASYNC109 prefers asyncio.timeout() to `timeout` parameters; here `timeout` is the gRPC deadline, which
# travels to the server so that it stops generating when the deadline passes. A local timeout cannot.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, Unpack

import grpc
from grpc import aio
from parley.v1.chat_pb2 import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from parley.v1.chat_service_pb2_grpc import ChatServiceStub
from parley.v1.completion_pb2 import Completion, CompletionChunk, CompletionRequest
from parley.v1.generation_pb2 import ChatTemplateOptions, Tool
from parley.v1.model_pb2 import (
    DetokenizeRequest,
    GetModelRequest,
    ListModelsRequest,
    ListModelsResponse,
    ModelInfo,
    RenderPromptResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from parley.v1.model_service_pb2_grpc import ModelServiceStub
from parley.v1.session_pb2 import ChatSessionRequest, ChatSessionResponse, SessionDone, SessionStarted

from parley_client.call_settings import CallSettings, MetadataLike
from parley_client.errors import ParleyError, ParleyRpcError, SessionEndedError, error_from_rpc_error
from parley_client.messages import MessageLike
from parley_client.options import (
    ChatOptions,
    CompletionOptions,
    GenerationOptions,
    RenderOptions,
    TruncationLike,
    build_generation_params,
    build_render_request,
    chat_request_from,
    completion_request_from,
)
from parley_client.session import (
    SESSION_KEY,
    ResponseRouter,
    cancel_request,
    new_request_id,
    start_request,
    started_event,
    turn_event,
    user_request,
)

if TYPE_CHECKING:  # the async stub types exist only in the generated .pyi files
    from parley.v1.chat_service_pb2_grpc import ChatServiceAsyncStub
    from parley.v1.model_service_pb2_grpc import ModelServiceAsyncStub

_Response = TypeVar("_Response")


class AsyncParleyClient:
    """An asyncio client for ChatService and ModelService; create and use it inside one event loop."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = (),
        wait_for_ready: bool | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Connect to `target` (`host:port`); TLS when `credentials` are given, plaintext otherwise."""
        if credentials is None:
            channel = aio.insecure_channel(target, options=options)
        else:
            channel = aio.secure_channel(target, credentials, options=options)
        self._channel = channel
        self.settings = CallSettings(timeout, tuple(metadata), wait_for_ready)
        self.chat_service: ChatServiceAsyncStub = ChatServiceStub(channel)
        self.model_service: ModelServiceAsyncStub = ModelServiceStub(channel)

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(
        self,
        method: aio.UnaryUnaryMultiCallable[Any, _Response],
        request: object,
        timeout: float | None,
        metadata: MetadataLike,
    ) -> _Response:
        try:
            return await method(
                request,
                timeout=self.settings.call_timeout(timeout),
                metadata=self.settings.call_metadata(metadata),
                wait_for_ready=self.settings.wait_for_ready,
            )
        except grpc.RpcError as error:
            raise error_from_rpc_error(error) from error

    async def _stream(
        self,
        method: aio.UnaryStreamMultiCallable[Any, _Response],
        request: object,
        timeout: float | None,
        metadata: MetadataLike,
    ) -> AsyncGenerator[_Response, None]:
        call = method(
            request,
            timeout=self.settings.call_timeout(timeout),
            metadata=self.settings.call_metadata(metadata),
            wait_for_ready=self.settings.wait_for_ready,
        )
        try:
            async for response in call:
                yield response
        except grpc.RpcError as error:
            raise error_from_rpc_error(error) from error
        finally:
            call.cancel()  # a no-op once finished; stops generation when the caller stops reading early

    async def chat(
        self,
        messages: Iterable[MessageLike] | str | ChatCompletionRequest,
        *,
        model: str = "",
        timeout: float | None = None,
        metadata: MetadataLike = (),
        **options: Unpack[ChatOptions],
    ) -> ChatCompletion:
        """As ParleyClient.chat."""
        request = chat_request_from(messages, model, options)
        return await self._unary(self.chat_service.CreateChatCompletion, request, timeout, metadata)

    def stream_chat(
        self,
        messages: Iterable[MessageLike] | str | ChatCompletionRequest,
        *,
        model: str = "",
        timeout: float | None = None,
        metadata: MetadataLike = (),
        **options: Unpack[ChatOptions],
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        """As ParleyClient.stream_chat: `async for chunk in client.stream_chat(...)`; `aclose()` it
        (or use `contextlib.aclosing`) to cancel early."""
        request = chat_request_from(messages, model, options)
        return self._stream(self.chat_service.StreamChatCompletion, request, timeout, metadata)

    async def complete(
        self,
        prompt: str | Sequence[int] | CompletionRequest,
        *,
        model: str = "",
        timeout: float | None = None,
        metadata: MetadataLike = (),
        **options: Unpack[CompletionOptions],
    ) -> Completion:
        """As ParleyClient.complete."""
        request = completion_request_from(prompt, model, options)
        return await self._unary(self.chat_service.CreateCompletion, request, timeout, metadata)

    def stream_complete(
        self,
        prompt: str | Sequence[int] | CompletionRequest,
        *,
        model: str = "",
        timeout: float | None = None,
        metadata: MetadataLike = (),
        **options: Unpack[CompletionOptions],
    ) -> AsyncGenerator[CompletionChunk, None]:
        """As ParleyClient.stream_complete."""
        request = completion_request_from(prompt, model, options)
        return self._stream(self.chat_service.StreamCompletion, request, timeout, metadata)

    async def list_models(
        self, *, timeout: float | None = None, metadata: MetadataLike = ()
    ) -> ListModelsResponse:
        """As ParleyClient.list_models."""
        return await self._unary(self.model_service.ListModels, ListModelsRequest(), timeout, metadata)

    async def get_model(
        self, name: str = "", *, timeout: float | None = None, metadata: MetadataLike = ()
    ) -> ModelInfo:
        """As ParleyClient.get_model."""
        request = GetModelRequest(name=name)
        return (await self._unary(self.model_service.GetModel, request, timeout, metadata)).model

    async def tokenize(
        self,
        text: str,
        *,
        model: str = "",
        parse_special_tokens: bool = False,
        add_special_tokens: bool = False,
        timeout: float | None = None,
        metadata: MetadataLike = (),
    ) -> TokenizeResponse:
        """As ParleyClient.tokenize."""
        request = TokenizeRequest(
            model=model,
            text=text,
            parse_special_tokens=parse_special_tokens,
            add_special_tokens=add_special_tokens,
        )
        return await self._unary(self.model_service.Tokenize, request, timeout, metadata)

    async def detokenize(
        self,
        token_ids: Sequence[int],
        *,
        model: str = "",
        skip_special_tokens: bool = False,
        timeout: float | None = None,
        metadata: MetadataLike = (),
    ) -> str:
        """As ParleyClient.detokenize."""
        request = DetokenizeRequest(model=model, token_ids=token_ids, skip_special_tokens=skip_special_tokens)
        return (await self._unary(self.model_service.Detokenize, request, timeout, metadata)).text

    async def render_prompt(
        self,
        messages: Iterable[MessageLike] | str,
        *,
        model: str = "",
        timeout: float | None = None,
        metadata: MetadataLike = (),
        **options: Unpack[RenderOptions],
    ) -> RenderPromptResponse:
        """As ParleyClient.render_prompt."""
        request = build_render_request(messages, model=model, **options)
        return await self._unary(self.model_service.RenderPrompt, request, timeout, metadata)

    def session(
        self,
        *,
        model: str = "",
        system_prompt: str = "",
        history: Iterable[MessageLike] = (),
        tools: Sequence[Tool] = (),
        truncation: TruncationLike | None = None,
        template_options: ChatTemplateOptions | None = None,
        timeout: float | None = None,
        metadata: MetadataLike = (),
        **defaults: Unpack[GenerationOptions],
    ) -> AsyncChatSession:
        """As ParleyClient.session; open it with `async with` (or `await session.open()`)."""
        start = start_request(
            model=model,
            system_prompt=system_prompt,
            history=history,
            tools=tools,
            truncation=truncation,
            template_options=template_options,
            defaults=build_generation_params(**defaults),
        )
        return AsyncChatSession(self, start, timeout=timeout, metadata=metadata)


class AsyncChatSession:
    """A conversation kept on the server, over grpc.aio. Use it from one task at a time."""

    def __init__(
        self,
        client: AsyncParleyClient,
        start: ChatSessionRequest,
        *,
        timeout: float | None,
        metadata: MetadataLike,
    ) -> None:
        self._client = client
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
        settings = self._client.settings
        self._call = self._client.chat_service.Chat(
            None,  # requests are written with call.write()
            timeout=self._timeout,
            metadata=settings.call_metadata(self._metadata),
            wait_for_ready=settings.wait_for_ready,
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
