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

from collections.abc import AsyncGenerator, Iterable, Sequence
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

from parley_client.aio_session import AsyncChatSession
from parley_client.call_settings import CallSettings, MetadataLike
from parley_client.errors import error_from_rpc_error
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
from parley_client.session import start_request

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
        return AsyncChatSession(
            self.chat_service.Chat, self.settings, start, timeout=timeout, metadata=metadata
        )
