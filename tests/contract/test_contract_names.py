"""The names and meanings DESIGN.md §3 fixes, checked on the compiled descriptors of parley.v1."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, ServiceDescriptor
from parley.v1 import (
    chat_pb2,
    chat_service_pb2,
    common_pb2,
    completion_pb2,
    generation_pb2,
    message_pb2,
    model_pb2,
    model_service_pb2,
    session_pb2,
)

F = FieldDescriptor
MESSAGES: dict[str, Descriptor] = {
    name: descriptor
    for module in (chat_pb2, common_pb2, completion_pb2, generation_pb2, message_pb2, model_pb2, session_pb2)
    for name, descriptor in module.DESCRIPTOR.message_types_by_name.items()
}


def field(message: str, name: str) -> FieldDescriptor:
    fields = MESSAGES[message].fields_by_name
    assert name in fields, f"{message} has no field {name}"
    return fields[name]


# --- services ---------------------------------------------------------------------------------------
# (service, method, input, output, client streaming, server streaming)
RPCS = [
    ("ChatService", "CreateChatCompletion", "ChatCompletionRequest", "ChatCompletion", False, False),
    ("ChatService", "StreamChatCompletion", "ChatCompletionRequest", "ChatCompletionChunk", False, True),
    ("ChatService", "CreateCompletion", "CompletionRequest", "Completion", False, False),
    ("ChatService", "StreamCompletion", "CompletionRequest", "CompletionChunk", False, True),
    ("ChatService", "Chat", "ChatSessionRequest", "ChatSessionResponse", True, True),
    ("ModelService", "ListModels", "ListModelsRequest", "ListModelsResponse", False, False),
    ("ModelService", "GetModel", "GetModelRequest", "GetModelResponse", False, False),
    ("ModelService", "Tokenize", "TokenizeRequest", "TokenizeResponse", False, False),
    ("ModelService", "Detokenize", "DetokenizeRequest", "DetokenizeResponse", False, False),
    ("ModelService", "RenderPrompt", "RenderPromptRequest", "RenderPromptResponse", False, False),
]
SERVICES: dict[str, ServiceDescriptor] = {
    "ChatService": chat_service_pb2.DESCRIPTOR.services_by_name["ChatService"],
    "ModelService": model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
}


@pytest.mark.parametrize(
    ("service", "method", "request_type", "response_type", "client_streaming", "server_streaming"),
    RPCS,
    ids=[f"{rpc[0]}.{rpc[1]}" for rpc in RPCS],
)
def test_rpc_signature(
    service: str,
    method: str,
    request_type: str,
    response_type: str,
    client_streaming: bool,
    server_streaming: bool,
) -> None:
    rpc = SERVICES[service].methods_by_name[method]
    assert rpc.input_type.full_name == f"parley.v1.{request_type}"
    assert rpc.output_type.full_name == f"parley.v1.{response_type}"
    assert (rpc.client_streaming, rpc.server_streaming) == (client_streaming, server_streaming)


def test_services_have_exactly_the_listed_rpcs() -> None:
    for name, service in SERVICES.items():
        assert service.full_name == f"parley.v1.{name}"
        assert {m.name for m in service.methods} == {rpc[1] for rpc in RPCS if rpc[0] == name}


def test_every_file_is_in_package_parley_v1() -> None:
    files = [chat_pb2, chat_service_pb2, common_pb2, completion_pb2, generation_pb2]
    files += [message_pb2, model_pb2, model_service_pb2, session_pb2]
    assert {module.DESCRIPTOR.package for module in files} == {"parley.v1"}


# --- enums ------------------------------------------------------------------------------------------
ENUMS: list[tuple[EnumDescriptor, list[str]]] = [
    (
        message_pb2.DESCRIPTOR.enum_types_by_name["Role"],
        ["UNSPECIFIED", "SYSTEM", "USER", "ASSISTANT", "TOOL", "DEVELOPER"],
    ),
    (
        common_pb2.DESCRIPTOR.enum_types_by_name["FinishReason"],
        ["UNSPECIFIED", "STOP", "LENGTH", "CONTEXT_LENGTH", "TOOL_CALLS", "CANCELLED", "TIME_LIMIT"],
    ),
]


@pytest.mark.parametrize(("enum", "suffixes"), ENUMS, ids=[e.name for e, _ in ENUMS])
def test_enum_values_and_numbers(enum: EnumDescriptor, suffixes: list[str]) -> None:
    prefix = "ROLE" if enum.name == "Role" else "FINISH_REASON"
    expected = {f"{prefix}_{suffix}": number for number, suffix in enumerate(suffixes)}
    actual = {value.name: value.number for value in enum.values}
    assert {name: actual.get(name) for name in expected} == expected


# --- fields -----------------------------------------------------------------------------------------
# (message, field, type, repeated, has presence, message or enum type name or None)
SAMPLING_FIELDS = [
    ("temperature", F.TYPE_FLOAT, False, True, None),
    ("top_p", F.TYPE_FLOAT, False, True, None),
    ("top_k", F.TYPE_INT32, False, True, None),
    ("min_p", F.TYPE_FLOAT, False, True, None),
    ("max_tokens", F.TYPE_INT32, False, True, None),
    ("stop", F.TYPE_STRING, True, False, None),
    ("seed", F.TYPE_INT64, False, True, None),
    ("frequency_penalty", F.TYPE_FLOAT, False, True, None),
    ("presence_penalty", F.TYPE_FLOAT, False, True, None),
    ("repetition_penalty", F.TYPE_FLOAT, False, True, None),
    ("top_logprobs", F.TYPE_INT32, False, True, None),
    ("min_tokens", F.TYPE_INT32, False, True, None),
    ("ignore_eos", F.TYPE_BOOL, False, True, None),
]
FIELDS = [
    ("ChatMessage", "role", F.TYPE_ENUM, False, False, "parley.v1.Role"),
    ("ChatMessage", "content", F.TYPE_STRING, False, False, None),
    ("ChatMessage", "name", F.TYPE_STRING, False, False, None),
    ("ChatMessage", "tool_calls", F.TYPE_MESSAGE, True, False, "parley.v1.ToolCall"),
    ("ChatMessage", "tool_call_id", F.TYPE_STRING, False, False, None),
    ("ChatCompletionRequest", "model", F.TYPE_STRING, False, False, None),
    ("ChatCompletionRequest", "messages", F.TYPE_MESSAGE, True, False, "parley.v1.ChatMessage"),
    *(("ChatCompletionRequest", *sampling) for sampling in SAMPLING_FIELDS),
    ("ChatCompletionRequest", "logprobs", F.TYPE_BOOL, False, False, None),
    ("ChatCompletionRequest", "n", F.TYPE_INT32, False, True, None),
    ("ChatCompletionRequest", "response_format", F.TYPE_MESSAGE, False, True, "parley.v1.ResponseFormat"),
    ("ChatCompletionRequest", "tools", F.TYPE_MESSAGE, True, False, "parley.v1.Tool"),
    ("ChatCompletionRequest", "tool_choice", F.TYPE_MESSAGE, False, True, "parley.v1.ToolChoice"),
    ("ChatCompletionRequest", "user", F.TYPE_STRING, False, False, None),
    ("ChatCompletion", "id", F.TYPE_STRING, False, False, None),
    ("ChatCompletion", "model", F.TYPE_STRING, False, False, None),
    ("ChatCompletion", "created", F.TYPE_INT64, False, False, None),
    ("ChatCompletion", "choices", F.TYPE_MESSAGE, True, False, "parley.v1.Choice"),
    ("ChatCompletion", "usage", F.TYPE_MESSAGE, False, True, "parley.v1.Usage"),
    ("Choice", "index", F.TYPE_INT32, False, False, None),
    ("Choice", "message", F.TYPE_MESSAGE, False, True, "parley.v1.ChatMessage"),
    ("Choice", "finish_reason", F.TYPE_ENUM, False, False, "parley.v1.FinishReason"),
    ("Usage", "prompt_tokens", F.TYPE_INT32, False, False, None),
    ("Usage", "completion_tokens", F.TYPE_INT32, False, False, None),
    ("Usage", "total_tokens", F.TYPE_INT32, False, False, None),
    ("Usage", "cached_tokens", F.TYPE_INT32, False, False, None),
    ("ChatCompletionChunk", "id", F.TYPE_STRING, False, False, None),
    ("ChatCompletionChunk", "model", F.TYPE_STRING, False, False, None),
    ("ChatCompletionChunk", "created", F.TYPE_INT64, False, False, None),
    ("ChatCompletionChunk", "choices", F.TYPE_MESSAGE, True, False, "parley.v1.ChunkChoice"),
    ("ChatCompletionChunk", "usage", F.TYPE_MESSAGE, False, True, "parley.v1.Usage"),
    ("ChunkChoice", "index", F.TYPE_INT32, False, False, None),
    ("ChunkChoice", "delta", F.TYPE_MESSAGE, False, True, "parley.v1.Delta"),
    ("ChunkChoice", "finish_reason", F.TYPE_ENUM, False, False, "parley.v1.FinishReason"),
    ("Delta", "role", F.TYPE_ENUM, False, False, "parley.v1.Role"),
    ("Delta", "content", F.TYPE_STRING, False, False, None),
    ("Delta", "tool_calls", F.TYPE_MESSAGE, True, False, "parley.v1.ToolCallDelta"),
    ("RenderPromptRequest", "messages", F.TYPE_MESSAGE, True, False, "parley.v1.ChatMessage"),
    ("RenderPromptResponse", "text", F.TYPE_STRING, False, False, None),
    ("RenderPromptResponse", "token_ids", F.TYPE_INT32, True, False, None),
    ("CompletionRequest", "model", F.TYPE_STRING, False, False, None),
    ("CompletionRequest", "prompt", F.TYPE_STRING, False, False, None),
    *(("CompletionRequest", *sampling) for sampling in SAMPLING_FIELDS),
    *(("GenerationParams", *sampling) for sampling in SAMPLING_FIELDS),
    ("TokenizeRequest", "text", F.TYPE_STRING, False, False, None),
    ("DetokenizeRequest", "token_ids", F.TYPE_INT32, True, False, None),
    ("ChatSessionRequest", "start", F.TYPE_MESSAGE, False, True, "parley.v1.SessionStart"),
    ("ChatSessionRequest", "user", F.TYPE_MESSAGE, False, True, "parley.v1.SessionUser"),
    ("ChatSessionRequest", "cancel", F.TYPE_MESSAGE, False, True, "parley.v1.SessionCancel"),
    ("SessionUser", "messages", F.TYPE_MESSAGE, True, False, "parley.v1.ChatMessage"),
    ("SessionUser", "request_id", F.TYPE_STRING, False, False, None),
    ("ChatSessionResponse", "request_id", F.TYPE_STRING, False, False, None),
    ("ChatSessionResponse", "started", F.TYPE_MESSAGE, False, True, "parley.v1.SessionStarted"),
    ("ChatSessionResponse", "chunk", F.TYPE_MESSAGE, False, True, "parley.v1.ChatCompletionChunk"),
    ("ChatSessionResponse", "done", F.TYPE_MESSAGE, False, True, "parley.v1.SessionDone"),
    ("ChatSessionResponse", "error", F.TYPE_MESSAGE, False, True, "google.rpc.Status"),
    ("SessionDone", "finish_reason", F.TYPE_ENUM, False, False, "parley.v1.FinishReason"),
    ("SessionDone", "usage", F.TYPE_MESSAGE, False, True, "parley.v1.Usage"),
]


@pytest.mark.parametrize(
    ("message", "name", "field_type", "repeated", "presence", "type_name"),
    FIELDS,
    ids=[f"{f[0]}.{f[1]}" for f in FIELDS],
)
def test_fixed_field(
    message: str, name: str, field_type: int, repeated: bool, presence: bool, type_name: str | None
) -> None:
    descriptor = field(message, name)
    assert descriptor.type == field_type
    assert descriptor.is_repeated == repeated
    assert descriptor.has_presence == presence
    nested = descriptor.message_type or descriptor.enum_type
    assert (nested.full_name if nested is not None else None) == type_name


def test_logit_bias_is_a_map_of_token_id_to_float() -> None:
    for message in ("ChatCompletionRequest", "CompletionRequest", "GenerationParams"):
        entry = field(message, "logit_bias").message_type
        assert entry is not None and entry.GetOptions().map_entry
        assert (entry.fields_by_name["key"].type, entry.fields_by_name["value"].type) == (
            F.TYPE_INT32,
            F.TYPE_FLOAT,
        )


@pytest.mark.parametrize(
    ("message", "oneof", "members"),
    [
        ("ChatSessionRequest", "kind", {"start", "user", "cancel"}),
        ("ChatSessionResponse", "kind", {"started", "chunk", "done", "error"}),
    ],
    ids=["ChatSessionRequest.kind", "ChatSessionResponse.kind"],
)
def test_session_oneofs(message: str, oneof: str, members: set[str]) -> None:
    assert {f.name for f in MESSAGES[message].oneofs_by_name[oneof].fields} == members


@pytest.mark.parametrize(
    "message", ["ChatCompletionRequest", "CompletionRequest", "GenerationParams"], ids=str
)
def test_no_request_number_or_flag_lacks_presence(message: str) -> None:
    """Zero must never mean "unset": every singular number or flag in a generation request is `optional`
    (`logprobs` is the one plain bool DESIGN fixes: false is its natural default)."""
    numeric = {F.TYPE_FLOAT, F.TYPE_DOUBLE, F.TYPE_INT32, F.TYPE_INT64, F.TYPE_UINT32, F.TYPE_UINT64}
    numeric |= {F.TYPE_SINT32, F.TYPE_SINT64, F.TYPE_BOOL}
    lacking = [
        f.name
        for f in MESSAGES[message].fields
        if f.type in numeric and not f.is_repeated and not f.has_presence and f.name != "logprobs"
    ]
    assert lacking == []


def test_completion_and_session_sampling_fields_match_chat() -> None:
    """The same sampling field has the same number, type and presence everywhere it appears."""
    chat = MESSAGES["ChatCompletionRequest"].fields_by_name
    for message in ("CompletionRequest", "GenerationParams", "RenderPromptRequest"):
        for other in MESSAGES[message].fields:
            if other.name in chat and not (message == "GenerationParams" and other.name == "logprobs"):
                mine = chat[other.name]
                assert (other.number, other.type, other.is_repeated, other.has_presence) == (
                    mine.number,
                    mine.type,
                    mine.is_repeated,
                    mine.has_presence,
                ), f"{message}.{other.name} differs from ChatCompletionRequest.{other.name}"


def test_a_chat_request_parses_as_a_render_prompt_request() -> None:
    """RenderPrompt accepts the chat request's bytes: what it renders is what generation is fed."""
    chat = chat_pb2.ChatCompletionRequest(
        model="m",
        messages=[message_pb2.ChatMessage(role=message_pb2.ROLE_USER, content="hi")],
        max_tokens=7,
        tools=[generation_pb2.Tool(function=generation_pb2.FunctionDefinition(name="f"))],
        truncation=generation_pb2.TRUNCATION_DROP_OLDEST,
        template_options=generation_pb2.ChatTemplateOptions(add_generation_prompt=False),
        temperature=0.5,
    )
    render = model_pb2.RenderPromptRequest.FromString(chat.SerializeToString())
    assert render.model == "m" and list(render.messages) == list(chat.messages)
    assert render.max_tokens == 7 and render.HasField("max_tokens")
    assert list(render.tools) == list(chat.tools)
    assert render.truncation == generation_pb2.TRUNCATION_DROP_OLDEST
    assert render.template_options == chat.template_options
