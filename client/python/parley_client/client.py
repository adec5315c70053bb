"""The synchronous client: ParleyClient over one gRPC channel, and ChatSession for the bidirectional Chat.

    with ParleyClient("127.0.0.1:50051") as client:
        reply = client.chat([("user", "Hello!")], temperature=0, max_tokens=64)
        print(reply.choices[0].message.content)

Every call takes `timeout` (seconds; default: the client's) and `metadata` (added to the client's).
A failed call raises ParleyRpcError with the status code and the server's field violations.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from typing import Any, Self, TypeVar, Unpack

import grpc
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
from parley_client.sync_session import ChatSession

_Response = TypeVar("_Response")


class ParleyClient:
    """A blocking client for ChatService and ModelService. Thread-safe, like the gRPC channel under it."""

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
            channel = grpc.insecure_channel(target, options=options)
        else:
            channel = grpc.secure_channel(target, credentials, options=options)
        self._channel = channel
        self.settings = CallSettings(timeout, tuple(metadata), wait_for_ready)
        self.chat_service = ChatServiceStub(channel)  # the raw stubs, for anything the helpers lack
        self.model_service = ModelServiceStub(channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[Any, _Response],
        request: object,
        timeout: float | None,
        metadata: MetadataLike,
    ) -> _Response:
        try:
            return method(
                request,
                timeout=self.settings.call_timeout(timeout),
                metadata=self.settings.call_metadata(metadata),
                wait_for_ready=self.settings.wait_for_ready,
            )
        except grpc.RpcError as error:
            raise error_from_rpc_error(error) from error

    def _stream(
        self,
        method: grpc.UnaryStreamMultiCallable[Any, _Response],
        request: object,
        timeout: float | None,
        metadata: MetadataLike,
    ) -> Generator[_Response, None, None]:
        call = method(
            request,
            timeout=self.settings.call_timeout(timeout),
            metadata=self.settings.call_metadata(metadata),
            wait_for_ready=self.settings.wait_for_ready,
        )
        try:
            yield from call
        except grpc.RpcError as error:
            raise error_from_rpc_error(error) from error
        finally:
            # A no-op once finished; stops generation when the caller stops reading early.
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves cancel() unannotated

    def chat(
        self,
        messages: Iterable[MessageLike] | str | ChatCompletionRequest,
        *,
        model: str = "",
        timeout: float | None = None,
        metadata: MetadataLike = (),
        **options: Unpack[ChatOptions],
    ) -> ChatCompletion:
        """One complete chat completion. `messages`: (role, content) pairs, ChatMessages, one user
        string, or a ready ChatCompletionRequest (then without options)."""
        request = chat_request_from(messages, model, options)
        return self._unary(self.chat_service.CreateChatCompletion, request, timeout, metadata)

    def stream_chat(
        self,
        messages: Iterable[MessageLike] | str | ChatCompletionRequest,
        *,
        model: str = "",
        timeout: float | None = None,
        metadata: MetadataLike = (),
        **options: Unpack[ChatOptions],
    ) -> Generator[ChatCompletionChunk, None, None]:
        """A chat completion as chunks; the last carries usage. Closing the generator early (`close()`,
        `contextlib.closing`) cancels the call and so the generation."""
        request = chat_request_from(messages, model, options)
        return self._stream(self.chat_service.StreamChatCompletion, request, timeout, metadata)

    def complete(
        self,
        prompt: str | Sequence[int] | CompletionRequest,
        *,
        model: str = "",
        timeout: float | None = None,
        metadata: MetadataLike = (),
        **options: Unpack[CompletionOptions],
    ) -> Completion:
        """One complete raw-prompt completion; `prompt` is text, token ids, or a ready CompletionRequest."""
        request = completion_request_from(prompt, model, options)
        return self._unary(self.chat_service.CreateCompletion, request, timeout, metadata)

    def stream_complete(
        self,
        prompt: str | Sequence[int] | CompletionRequest,
        *,
        model: str = "",
        timeout: float | None = None,
        metadata: MetadataLike = (),
        **options: Unpack[CompletionOptions],
    ) -> Generator[CompletionChunk, None, None]:
        """A raw-prompt completion as chunks; the last carries usage. Closing the generator cancels it."""
        request = completion_request_from(prompt, model, options)
        return self._stream(self.chat_service.StreamCompletion, request, timeout, metadata)

    def list_models(self, *, timeout: float | None = None, metadata: MetadataLike = ()) -> ListModelsResponse:
        """The served models and the default model's name."""
        return self._unary(self.model_service.ListModels, ListModelsRequest(), timeout, metadata)

    def get_model(
        self, name: str = "", *, timeout: float | None = None, metadata: MetadataLike = ()
    ) -> ModelInfo:
        """One model's description (the default model when `name` is empty)."""
        response = self._unary(self.model_service.GetModel, GetModelRequest(name=name), timeout, metadata)
        return response.model

    def tokenize(
        self,
        text: str,
        *,
        model: str = "",
        parse_special_tokens: bool = False,
        add_special_tokens: bool = False,
        timeout: float | None = None,
        metadata: MetadataLike = (),
    ) -> TokenizeResponse:
        """Token ids (and vocabulary strings) of `text`."""
        request = TokenizeRequest(
            model=model,
            text=text,
            parse_special_tokens=parse_special_tokens,
            add_special_tokens=add_special_tokens,
        )
        return self._unary(self.model_service.Tokenize, request, timeout, metadata)

    def detokenize(
        self,
        token_ids: Sequence[int],
        *,
        model: str = "",
        skip_special_tokens: bool = False,
        timeout: float | None = None,
        metadata: MetadataLike = (),
    ) -> str:
        """The text of `token_ids`."""
        request = DetokenizeRequest(model=model, token_ids=token_ids, skip_special_tokens=skip_special_tokens)
        return self._unary(self.model_service.Detokenize, request, timeout, metadata).text

    def render_prompt(
        self,
        messages: Iterable[MessageLike] | str,
        *,
        model: str = "",
        timeout: float | None = None,
        metadata: MetadataLike = (),
        **options: Unpack[RenderOptions],
    ) -> RenderPromptResponse:
        """The exact prompt text and token ids a chat completion of `messages` would feed the model."""
        request = build_render_request(messages, model=model, **options)
        return self._unary(self.model_service.RenderPrompt, request, timeout, metadata)

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
    ) -> ChatSession:
        """A Chat session, opened on `with` (or `open()`). `defaults` apply to every turn.

        `timeout` bounds the whole session (default: none, not the client's per-call timeout)."""
        start = start_request(
            model=model,
            system_prompt=system_prompt,
            history=history,
            tools=tools,
            truncation=truncation,
            template_options=template_options,
            defaults=build_generation_params(**defaults),
        )
        return ChatSession(self.chat_service.Chat, self.settings, start, timeout=timeout, metadata=metadata)
