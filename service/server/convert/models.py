"""A served model -> ModelInfo, and the model service's small responses."""

from __future__ import annotations

from collections.abc import Sequence

from parley.v1 import model_pb2
from parley.v1.model_pb2 import (
    ChatTemplate,
    DetokenizeResponse,
    GetModelResponse,
    ListModelsResponse,
    ModelInfo,
    RenderPromptResponse,
    SpecialToken,
    SpecialTokens,
    TokenizeResponse,
)

from service.server.served_model import ServedModel
from service.templates import FittedPrompt

_PRECISIONS: dict[str, model_pb2.Precision.ValueType] = {
    "int4": model_pb2.PRECISION_INT4,
    "int8": model_pb2.PRECISION_INT8,
    "fp16": model_pb2.PRECISION_FP16,
    "fp32": model_pb2.PRECISION_FP32,
    "float16": model_pb2.PRECISION_FP16,
    "float32": model_pb2.PRECISION_FP32,
}
_TEMPLATE_KINDS: dict[str, model_pb2.ChatTemplateKind.ValueType] = {
    "builtin": model_pb2.CHAT_TEMPLATE_KIND_BUILTIN,
    "jinja": model_pb2.CHAT_TEMPLATE_KIND_JINJA,
}


def _special(spelling: dict[int, str], token_id: int | None) -> SpecialToken | None:
    if token_id is None or token_id not in spelling:
        return None
    return SpecialToken(text=spelling[token_id], id=token_id)


def model_info(model: ServedModel) -> ModelInfo:
    card, template = model.card, model.template_info
    spelling = {token_id: text for text, token_id in card.special_tokens.items()}
    special = SpecialTokens(
        bos=_special(spelling, card.bos_token_id),
        eos=_special(spelling, card.eos_token_id),
        pad=_special(spelling, card.pad_token_id),
        control=[SpecialToken(text=text, id=token_id) for token_id, text in sorted(spelling.items())],
        add_bos=card.add_bos,
    )
    return ModelInfo(
        name=model.name,
        architecture=card.architecture,
        context_window=model.context_window,
        train_context=card.train_context,
        vocab_size=card.vocab_size,
        template=ChatTemplate(
            kind=_TEMPLATE_KINDS[template.kind],
            name=template.name,
            source=template.source,
            stop=template.stop,
            stop_token_ids=template.stop_token_ids,
        ),
        special_tokens=special,
        stop_token_ids=card.stop_token_ids,
        capabilities=[model_pb2.MODEL_CAPABILITY_CHAT, model_pb2.MODEL_CAPABILITY_COMPLETION],
        weight_precision=_PRECISIONS.get(card.precision, model_pb2.PRECISION_UNSPECIFIED),
        kv_cache_precision=_PRECISIONS.get(card.graph.kv_dtype, model_pb2.PRECISION_UNSPECIFIED),
        source_sha256=card.source.sha256,
        converter_version=card.converter_version,
    )


def list_models_response(served: Sequence[ServedModel], default: ServedModel) -> ListModelsResponse:
    return ListModelsResponse(models=[model_info(model) for model in served], default_model=default.name)


def get_model_response(model: ServedModel) -> GetModelResponse:
    return GetModelResponse(model=model_info(model))


def detokenize_response(text: str) -> DetokenizeResponse:
    return DetokenizeResponse(text=text)


def render_response(fitted: FittedPrompt) -> RenderPromptResponse:
    return RenderPromptResponse(
        text=fitted.prompt.text, token_ids=fitted.prompt.token_ids, dropped_messages=fitted.dropped_messages
    )


def tokenize_response(token_ids: list[int], tokens: list[str]) -> TokenizeResponse:
    return TokenizeResponse(token_ids=token_ids, tokens=tokens)
