"""Raw-prompt completions (CreateCompletion, StreamCompletion): no template, the prompt as sent."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

from parley.v1.completion_pb2 import Completion, CompletionChunk, CompletionRequest

from service.engine.events import (
    ChoiceFinished,
    GenerationRequest,
    RequestFailed,
    RequestFinished,
    TokenEvent,
)
from service.server.convert import inbound, outbound
from service.server.generation import CallInfo, collect, engine_deadline
from service.server.rpc import Context, streaming, unary
from service.server.served_model import ModelRegistry, ServedModel

log = logging.getLogger(__name__)


class CompletionHandlers:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def _prepare(
        self, request: CompletionRequest, context: Context
    ) -> tuple[ServedModel, CallInfo, GenerationRequest]:
        plain = inbound.completion_request(request)
        model = self.registry.get(plain.model)
        sampling = model.sampling(plain.sampling, chat=False)
        prompt_ids = model.completion_prompt(plain)
        model.check_serving()
        call = CallInfo.new("cmpl", model.name, model.fingerprint)
        generation = model.generation(
            call.id, prompt_ids, sampling, n=plain.n, deadline=engine_deadline(context.time_remaining())
        )
        return model, call, generation

    @unary
    async def create(self, request: CompletionRequest, context: Context) -> Completion:
        model, call, generation = self._prepare(request, context)
        async with model.events(generation) as events:
            output = await collect(events, generation.n)
        log.info("%s done: %s", call.id, output.usage)
        return outbound.completion(call, output, model.speller, with_logprobs=generation.sampling.logprobs)

    @streaming
    async def stream(
        self, request: CompletionRequest, context: Context
    ) -> AsyncGenerator[CompletionChunk, None]:
        model, call, generation = self._prepare(request, context)
        async with model.events(generation) as events:
            async for event in events:
                if isinstance(event, TokenEvent | ChoiceFinished):
                    chunk = outbound.completion_chunk(call, event, model.speller)
                    if chunk is not None:
                        yield chunk
                elif isinstance(event, RequestFinished):
                    log.info("%s streamed: %s", call.id, event.usage)
                    yield outbound.completion_last_chunk(call, event, generation.n)
                elif isinstance(event, RequestFailed):
                    raise event.error
