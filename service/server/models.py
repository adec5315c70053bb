"""ModelService: the served models, their tokenizer and their chat template. Needs no warm engine."""

from __future__ import annotations

from parley.v1 import model_service_pb2_grpc
from parley.v1.model_pb2 import (
    DetokenizeRequest,
    DetokenizeResponse,
    GetModelRequest,
    GetModelResponse,
    ListModelsRequest,
    ListModelsResponse,
    RenderPromptRequest,
    RenderPromptResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from typing_extensions import override

from service.server.convert import inbound, models
from service.server.rpc import Context, unary
from service.server.served_model import ModelRegistry


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    @override
    @unary
    async def ListModels(self, request: ListModelsRequest, context: Context) -> ListModelsResponse:
        return models.list_models_response(self.registry.models, self.registry.default)

    @override
    @unary
    async def GetModel(self, request: GetModelRequest, context: Context) -> GetModelResponse:
        return models.get_model_response(self.registry.get(inbound.model_name(request), field="name"))

    @override
    @unary
    async def Tokenize(self, request: TokenizeRequest, context: Context) -> TokenizeResponse:
        plain = inbound.tokenize_request(request)
        token_ids, tokens = self.registry.get(plain.model).tokenize(plain)
        return models.tokenize_response(token_ids, tokens)

    @override
    @unary
    async def Detokenize(self, request: DetokenizeRequest, context: Context) -> DetokenizeResponse:
        plain = inbound.detokenize_request(request)
        return models.detokenize_response(self.registry.get(plain.model).detokenize(plain))

    @override
    @unary
    async def RenderPrompt(self, request: RenderPromptRequest, context: Context) -> RenderPromptResponse:
        plain = inbound.render_request(request)
        return models.render_response(self.registry.get(plain.model).render_request(plain))
