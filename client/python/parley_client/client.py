"""The synchronous client: ParleyClient over one gRPC channel, and ChatSession for the bidirectional Chat.

    with ParleyClient("127.0.0.1:50051") as client:
        reply = client.chat([("user", "Hello!")], temperature=0, max_tokens=64)
        print(reply.choices[0].message.content)

Every call takes `timeout` (seconds; default: the client's) and `metadata` (added to the client's).
A failed call raises ParleyRpcError with the status code and the server's field violations.
"""

from __future__ import annotations

import queue
from collections.abc import Generator, Iterable, Iterator, Sequence
from types import TracebackType
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
        return ChatSession(self, start, timeout=timeout, metadata=metadata)


class ChatSession:
    """A conversation kept on the server. Not thread-safe: use one session from one thread.

    with client.session(system_prompt="Be brief.", temperature=0) as chat:
        print(chat.ask("Hi!").message.content)
        for chunk in chat.send("And then?"):
            print(chunk.choices[0].delta.content, end="")
    """

    def __init__(
        self,
        client: ParleyClient,
        start: ChatSessionRequest,
        *,
        timeout: float | None,
        metadata: MetadataLike,
    ) -> None:
        self._client = client
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
        settings = self._client.settings
        self._outbox.put(self._start)
        call = self._client.chat_service.Chat(
            iter(self._outbox.get, None),
            timeout=self._timeout,
            metadata=settings.call_metadata(self._metadata),
            wait_for_ready=settings.wait_for_ready,
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
