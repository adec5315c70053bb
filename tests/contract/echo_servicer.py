"""A small real gRPC server implementing parley.v1 by echoing, for testing the client's transport half.

It answers from the request alone (no model): enough to see that requests arrive intact, deadlines and
metadata travel, errors come back with their google.rpc details, streams can be cancelled, and sessions
route turns. The real server's behaviour is tested against the real server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from parley.v1 import chat_service_pb2_grpc, common_pb2, message_pb2, model_service_pb2_grpc
from parley.v1.chat_pb2 import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
)
from parley.v1.completion_pb2 import Completion, CompletionChunk, CompletionRequest
from parley.v1.model_pb2 import (
    DetokenizeRequest,
    DetokenizeResponse,
    GetModelRequest,
    GetModelResponse,
    ListModelsRequest,
    ListModelsResponse,
    ModelInfo,
    RenderPromptRequest,
    RenderPromptResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from parley.v1.session_pb2 import ChatSessionRequest, ChatSessionResponse, SessionDone, SessionStarted
from typing_extensions import override

DEFAULT_MODEL = "echo-1"
CALL_TIMEOUT = 10.0  # seconds: a hung call fails its test instead of hanging it


def bad_request(field: str, description: str) -> status_pb2.Status:
    """An INVALID_ARGUMENT status with one BadRequest field violation, as the real server sends."""
    detail = AnyMessage()
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=description, details=[detail])


def wait_until_done(context: grpc.ServicerContext) -> None:
    """Block until the call ends (cancelled by the client or past its deadline)."""
    ended = threading.Event()
    if context.add_callback(ended.set):
        ended.wait()


class EchoChatService(chat_service_pb2_grpc.ChatServiceServicer):
    """Replies `echo: <last message>`; records what it received for the tests to inspect."""

    def __init__(self) -> None:
        self.requests: list[ChatCompletionRequest] = []
        self.metadata: list[dict[str, str | bytes]] = []
        self.stream_cancelled = threading.Event()

    @override
    def CreateChatCompletion(
        self, request: ChatCompletionRequest, context: grpc.ServicerContext
    ) -> ChatCompletion:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        if request.HasField("temperature") and not 0 <= request.temperature <= 2:
            status = bad_request("temperature", f"temperature must be in [0, 2], got {request.temperature:g}")
            context.abort_with_status(rpc_status.to_status(status))
        last = request.messages[-1].content if request.messages else ""
        if last == "block":
            wait_until_done(context)
            return ChatCompletion()
        reply = message_pb2.ChatMessage(role=message_pb2.ROLE_ASSISTANT, content=f"echo: {last}")
        return ChatCompletion(
            id="chatcmpl-1",
            model=request.model or DEFAULT_MODEL,
            choices=[Choice(index=0, message=reply, finish_reason=common_pb2.FINISH_REASON_STOP)],
            usage=common_pb2.Usage(prompt_tokens=len(request.messages), completion_tokens=1, total_tokens=2),
        )

    @override
    def StreamChatCompletion(
        self, request: ChatCompletionRequest, context: grpc.ServicerContext
    ) -> Iterator[ChatCompletionChunk]:
        words = request.messages[-1].content.split() if request.messages else []
        endless = words == ["forever"]  # streams until the client cancels, which the callback records
        if endless:
            context.add_callback(self.stream_cancelled.set)
        index = 0
        while endless or index < len(words):
            word = words[0] if endless else words[index]
            role = message_pb2.ROLE_ASSISTANT if index == 0 else message_pb2.ROLE_UNSPECIFIED
            delta = Delta(role=role, content=word)
            yield ChatCompletionChunk(id="chatcmpl-2", choices=[ChunkChoice(index=0, delta=delta)])
            index += 1
        last = ChunkChoice(index=0, delta=Delta(), finish_reason=common_pb2.FINISH_REASON_STOP)
        usage = common_pb2.Usage(prompt_tokens=1, completion_tokens=len(words), total_tokens=1 + len(words))
        yield ChatCompletionChunk(id="chatcmpl-2", choices=[last], usage=usage)

    @override
    def CreateCompletion(self, request: CompletionRequest, context: grpc.ServicerContext) -> Completion:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "completions are not part of the echo server")

    @override
    def StreamCompletion(
        self, request: CompletionRequest, context: grpc.ServicerContext
    ) -> Iterator[CompletionChunk]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "completions are not part of the echo server")

    @override
    def Chat(
        self, request_iterator: Iterator[ChatSessionRequest], context: grpc.ServicerContext
    ) -> Iterator[ChatSessionResponse]:
        turns = 0
        for request in request_iterator:
            kind = request.WhichOneof("kind")
            if kind == "start":
                started = SessionStarted(session_id="s-1", model=request.start.model or DEFAULT_MODEL)
                yield ChatSessionResponse(started=started)
            elif kind == "user":
                turn = request.user
                text = turn.messages[-1].content
                if text == "fail":
                    error = bad_request("messages[0].content", "the echo server refuses `fail`")
                    yield ChatSessionResponse(request_id=turn.request_id, error=error)
                    continue
                for word in text.split():
                    chunk = ChatCompletionChunk(choices=[ChunkChoice(delta=Delta(content=word))])
                    yield ChatSessionResponse(request_id=turn.request_id, chunk=chunk)
                reply = message_pb2.ChatMessage(role=message_pb2.ROLE_ASSISTANT, content=f"echo: {text}")
                usage = common_pb2.Usage(prompt_tokens=turns + 1, cached_tokens=turns)
                done = SessionDone(finish_reason=common_pb2.FINISH_REASON_STOP, usage=usage, message=reply)
                yield ChatSessionResponse(request_id=turn.request_id, done=done)
                turns += 1


class EchoModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModel and Tokenize (one token per character); the other RPCs answer UNIMPLEMENTED."""

    @override
    def ListModels(self, request: ListModelsRequest, context: grpc.ServicerContext) -> ListModelsResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the echo server")

    @override
    def Detokenize(self, request: DetokenizeRequest, context: grpc.ServicerContext) -> DetokenizeResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the echo server")

    @override
    def RenderPrompt(
        self, request: RenderPromptRequest, context: grpc.ServicerContext
    ) -> RenderPromptResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the echo server")

    @override
    def GetModel(self, request: GetModelRequest, context: grpc.ServicerContext) -> GetModelResponse:
        if request.name not in ("", DEFAULT_MODEL):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model named {request.name!r}")
        return GetModelResponse(model=ModelInfo(name=DEFAULT_MODEL, context_window=8192))

    @override
    def Tokenize(self, request: TokenizeRequest, context: grpc.ServicerContext) -> TokenizeResponse:
        return TokenizeResponse(token_ids=[ord(c) for c in request.text], tokens=list(request.text))


@dataclass(frozen=True)
class EchoServer:
    """A running echo server: where to connect, and the chat servicer's record of what it received."""

    target: str
    chat: EchoChatService
