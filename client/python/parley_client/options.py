"""Keyword options that build requests: sampling parameters, tools, formats, truncation.

Option names are the request's field names, so `temperature=0.2` sets `ChatCompletionRequest.temperature`.
An option given as None stays unset (the server's default applies): callers can pass their own optional
values through without filtering them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias, TypedDict, Unpack

from google.protobuf.message import Message
from parley.v1 import generation_pb2
from parley.v1.chat_pb2 import ChatCompletionRequest
from parley.v1.completion_pb2 import CompletionRequest
from parley.v1.generation_pb2 import (
    ChatTemplateOptions,
    FunctionDefinition,
    GenerationParams,
    JsonObjectFormat,
    JsonSchemaFormat,
    ResponseFormat,
    Tool,
    ToolChoice,
    Truncation,
)
from parley.v1.model_pb2 import RenderPromptRequest

from parley_client.messages import MessageLike, to_messages

ToolChoiceLike: TypeAlias = ToolChoice | Literal["none", "auto", "required"]
TruncationLike: TypeAlias = Truncation.ValueType | Literal["disabled", "drop_oldest"]

_TOOL_CHOICE_MODES: dict[str, generation_pb2.ToolChoiceMode.ValueType] = {
    "none": generation_pb2.TOOL_CHOICE_MODE_NONE,
    "auto": generation_pb2.TOOL_CHOICE_MODE_AUTO,
    "required": generation_pb2.TOOL_CHOICE_MODE_REQUIRED,
}
_TRUNCATIONS: dict[str, Truncation.ValueType] = {
    "disabled": generation_pb2.TRUNCATION_DISABLED,
    "drop_oldest": generation_pb2.TRUNCATION_DROP_OLDEST,
}


class SamplingOptions(TypedDict, total=False):
    """Options every generation request takes (see ChatCompletionRequest in chat.proto for ranges)."""

    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    max_tokens: int | None
    min_tokens: int | None
    stop: Sequence[str] | None
    stop_token_ids: Sequence[int] | None
    seed: int | None
    frequency_penalty: float | None
    presence_penalty: float | None
    repetition_penalty: float | None
    logit_bias: Mapping[int, float] | None
    logprobs: bool | None
    top_logprobs: int | None
    ignore_eos: bool | None
    response_format: ResponseFormat | None


class GenerationOptions(SamplingOptions, total=False):
    """Options of a session turn (and a session's defaults): sampling plus tool use."""

    tool_choice: ToolChoiceLike | None
    parallel_tool_calls: bool | None


class ChatOptions(GenerationOptions, total=False):
    """Options of a chat completion request beside `model` and `messages`."""

    n: int | None
    user: str | None
    tools: Sequence[Tool] | None
    truncation: TruncationLike | None
    template_options: ChatTemplateOptions | None


class CompletionOptions(SamplingOptions, total=False):
    """Options of a raw-prompt completion request beside `model` and the prompt."""

    n: int | None
    user: str | None
    parse_special_tokens: bool | None
    add_bos: bool | None


class RenderOptions(TypedDict, total=False):
    """Options of RenderPrompt beside `model` and `messages`: the chat options that shape the prompt."""

    max_tokens: int | None
    tools: Sequence[Tool] | None
    truncation: TruncationLike | None
    template_options: ChatTemplateOptions | None


def to_tool_choice(choice: ToolChoiceLike) -> ToolChoice:
    """A ToolChoice from `"none"`, `"auto"` or `"required"`; a ToolChoice is returned as is."""
    if isinstance(choice, ToolChoice):
        return choice
    try:
        return ToolChoice(mode=_TOOL_CHOICE_MODES[choice])
    except KeyError:
        raise ValueError(
            f"unknown tool_choice {choice!r}; expected none, auto, required, or force_function(name)"
        ) from None


def to_truncation(truncation: TruncationLike) -> Truncation.ValueType:
    """A Truncation value from `"disabled"` or `"drop_oldest"`, or the enum value itself."""
    if isinstance(truncation, str):
        try:
            return _TRUNCATIONS[truncation]
        except KeyError:
            raise ValueError(f"unknown truncation {truncation!r}; expected disabled or drop_oldest") from None
    return truncation


def force_function(name: str) -> ToolChoice:
    """A tool choice that makes the model call the named function."""
    return ToolChoice(function_name=name)


def _json_text(value: Mapping[str, Any] | str) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def function_tool(
    name: str,
    description: str = "",
    parameters: Mapping[str, Any] | str | None = None,
    *,
    strict: bool = False,
) -> Tool:
    """A function tool; `parameters` is a JSON Schema as a dict or as JSON text."""
    return Tool(
        function=FunctionDefinition(
            name=name,
            description=description,
            parameters_json="" if parameters is None else _json_text(parameters),
            strict=strict,
        )
    )


def json_object_format() -> ResponseFormat:
    """Constrain the output to one JSON object."""
    return ResponseFormat(json_object=JsonObjectFormat())


def json_schema_format(
    schema: Mapping[str, Any] | str, *, name: str = "response", description: str = "", strict: bool = True
) -> ResponseFormat:
    """Constrain the output to JSON valid against `schema` (a dict or JSON text)."""
    return ResponseFormat(
        json_schema=JsonSchemaFormat(
            name=name, description=description, schema_json=_json_text(schema), strict=strict
        )
    )


def apply_options(request: Message, options: Mapping[str, Any]) -> None:
    """Set each option on the request field of the same name; None leaves a field unset.

    Repeated fields are extended, maps updated, message fields copied. An unknown name is a TypeError.
    """
    fields = request.DESCRIPTOR.fields_by_name
    for name, value in options.items():
        if value is None:
            continue
        field = fields.get(name)
        if field is None:
            raise TypeError(f"{request.DESCRIPTOR.name} has no option {name!r}")
        if name == "tool_choice":
            value = to_tool_choice(value)
        elif name == "truncation":
            value = to_truncation(value)
        target = getattr(request, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target.update(value)
        elif field.is_repeated:
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(request, name, value)


def build_chat_request(
    messages: Iterable[MessageLike] | str, *, model: str = "", **options: Unpack[ChatOptions]
) -> ChatCompletionRequest:
    """A ChatCompletionRequest; `messages` are (role, content) pairs or ChatMessages, or one user string."""
    request = ChatCompletionRequest(model=model, messages=to_messages(messages))
    apply_options(request, options)
    return request


def build_completion_request(
    prompt: str | Sequence[int], *, model: str = "", **options: Unpack[CompletionOptions]
) -> CompletionRequest:
    """A CompletionRequest from prompt text, or from token ids (fed to the model exactly)."""
    request = CompletionRequest(model=model)
    if isinstance(prompt, str):
        request.prompt = prompt
    else:
        request.prompt_token_ids.extend(prompt)
    apply_options(request, options)
    return request


def build_render_request(
    messages: Iterable[MessageLike] | str, *, model: str = "", **options: Unpack[RenderOptions]
) -> RenderPromptRequest:
    """A RenderPromptRequest for the same conversation a chat request would send."""
    request = RenderPromptRequest(model=model, messages=to_messages(messages))
    apply_options(request, options)
    return request


def build_generation_params(**options: Unpack[GenerationOptions]) -> GenerationParams:
    """GenerationParams for a session's defaults or one turn's overrides."""
    params = GenerationParams()
    apply_options(params, options)
    return params


def _has_options(model: str, options: Mapping[str, object]) -> bool:
    return bool(model) or any(value is not None for value in options.values())


def chat_request_from(
    messages: Iterable[MessageLike] | str | ChatCompletionRequest, model: str, options: ChatOptions
) -> ChatCompletionRequest:
    """A ready request as is, or one built from messages and options (mixing both is a TypeError)."""
    if isinstance(messages, ChatCompletionRequest):
        if _has_options(model, options):
            raise TypeError("pass either a ChatCompletionRequest or model/options, not both")
        return messages
    return build_chat_request(messages, model=model, **options)


def completion_request_from(
    prompt: str | Sequence[int] | CompletionRequest, model: str, options: CompletionOptions
) -> CompletionRequest:
    """A ready request as is, or one built from a prompt and options (mixing both is a TypeError)."""
    if isinstance(prompt, CompletionRequest):
        if _has_options(model, options):
            raise TypeError("pass either a CompletionRequest or model/options, not both")
        return prompt
    return build_completion_request(prompt, model=model, **options)
