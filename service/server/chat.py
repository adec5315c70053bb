"""ChatService: chat completions (unary and streamed) here; raw-prompt completions in completion.py and the
bidirectional session in session.py. Each handler converts, submits, iterates engine events and yields."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator

from parley.v1 import chat_service_pb2_grpc
from parley.v1.chat_pb2 import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from parley.v1.completion_pb2 import Completion, CompletionChunk, CompletionRequest
from parley.v1.session_pb2 import ChatSessionRequest, ChatSessionResponse
from typing_extensions import override

from service.engine.events import (
    ChoiceFinished,
    GenerationRequest,
    RequestFailed,
    RequestFinished,
    TokenEvent,
)
from service.server.completion import CompletionHandlers
from service.server.convert import inbound, outbound
from service.server.generation import CallInfo, collect, engine_deadline
from service.server.rpc import Context, streaming, unary
from service.server.served_model import ModelRegistry, PreparedChat, ServedModel
from service.server.session import run_session

log = logging.getLogger(__name__)


class ChatService(chat_service_pb2_grpc.ChatServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.completions = CompletionHandlers(registry)

    def _prepare(
        self, request: ChatCompletionRequest, context: Context
    ) -> tuple[ServedModel, PreparedChat, CallInfo, GenerationRequest]:
        """Convert, validate and render the request; the engine request to submit."""
        chat = inbound.chat_request(request)
        model = self.registry.get(chat.model)
        prepared = model.prepare_chat(chat)
        model.check_serving()
        call = CallInfo.new("chatcmpl", model.name, model.fingerprint)
        generation = model.generation(
            call.id,
            prepared.prompt.prompt.token_ids,
            prepared.sampling,
            n=chat.n,
            deadline=engine_deadline(context.time_remaining()),
        )
        return model, prepared, call, generation

    @override
    @unary
    async def CreateChatCompletion(self, request: ChatCompletionRequest, context: Context) -> ChatCompletion:
        model, prepared, call, generation = self._prepare(request, context)
        async with model.events(generation) as events:
            output = await collect(events, generation.n)
        log.info(
            "%s done: %d prompt tokens (%d cached), %d generated, %.3f s",
            call.id,
            output.usage.prompt_tokens,
            output.usage.cached_tokens,
            output.usage.completion_tokens,
            output.timings.total_s,
        )
        return outbound.chat_completion(
            call,
            output,
            model.speller,
            with_logprobs=prepared.sampling.logprobs,
            dropped=prepared.prompt.dropped_messages,
        )

    @override
    @streaming
    async def StreamChatCompletion(
        self, request: ChatCompletionRequest, context: Context
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        model, prepared, call, generation = self._prepare(request, context)
        started: set[int] = set()  # choices whose first chunk (with the role) went out
        async with model.events(generation) as events:
            async for event in events:
                if isinstance(event, TokenEvent | ChoiceFinished):
                    chunk = outbound.chat_chunk(call, event, model.speller, first=event.index not in started)
                    if chunk is not None:
                        started.add(event.index)
                        yield chunk
                elif isinstance(event, RequestFinished):
                    log.info("%s streamed: %s", call.id, event.usage)
                    yield outbound.chat_last_chunk(
                        call, event, generation.n, dropped=prepared.prompt.dropped_messages
                    )
                elif isinstance(event, RequestFailed):
                    raise event.error

    @override
    async def CreateCompletion(self, request: CompletionRequest, context: Context) -> Completion:
        return await self.completions.create(request, context)

    @override
    async def StreamCompletion(
        self, request: CompletionRequest, context: Context
    ) -> AsyncGenerator[CompletionChunk, None]:
        # grpc.aio streams from async generator functions only: delegate by iterating.
        async with contextlib.aclosing(self.completions.stream(request, context)) as chunks:
            async for chunk in chunks:
                yield chunk

    @override
    async def Chat(
        self, request_iterator: AsyncIterator[ChatSessionRequest], context: Context
    ) -> AsyncGenerator[ChatSessionResponse, None]:
        async with contextlib.aclosing(run_session(self.registry, request_iterator, context)) as responses:
            async for response in responses:
                yield response
