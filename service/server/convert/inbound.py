"""Protobuf requests -> plain requests. Every optional field is read through HasField: an unset field keeps
the server's default, and zero is always a real value."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from parley.v1 import generation_pb2, message_pb2
from parley.v1.chat_pb2 import ChatCompletionRequest
from parley.v1.completion_pb2 import CompletionRequest as CompletionRequestProto
from parley.v1.generation_pb2 import ChatTemplateOptions, GenerationParams, ResponseFormat, Tool, ToolChoice
from parley.v1.message_pb2 import ChatMessage
from parley.v1.model_pb2 import DetokenizeRequest as DetokenizeRequestProto
from parley.v1.model_pb2 import GetModelRequest, RenderPromptRequest
from parley.v1.model_pb2 import TokenizeRequest as TokenizeRequestProto
from parley.v1.session_pb2 import ChatSessionRequest, SessionStart, SessionUser

from service.errors import InvalidArgument, Unimplemented
from service.requests import Message, Role, ToolCall, ToolSpec
from service.server.requests import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    PromptOptions,
    RenderRequest,
    SamplingOverrides,
    SessionCancel,
    SessionOpening,
    SessionTurn,
    TokenizeRequest,
)

_ROLES: dict[int, Role] = {
    message_pb2.ROLE_SYSTEM: Role.SYSTEM,
    message_pb2.ROLE_USER: Role.USER,
    message_pb2.ROLE_ASSISTANT: Role.ASSISTANT,
    message_pb2.ROLE_TOOL: Role.TOOL,
    message_pb2.ROLE_DEVELOPER: Role.DEVELOPER,
}
NO_PARAMETERS_SCHEMA = '{"type": "object", "properties": {}}'


def message(proto: ChatMessage, where: str) -> Message:
    role = _ROLES.get(proto.role)
    if role is None:
        what = "must be set" if proto.role == message_pb2.ROLE_UNSPECIFIED else f"{proto.role} is not a role"
        raise InvalidArgument(
            f"{where}.role", f"{what}: ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_TOOL or ROLE_DEVELOPER"
        )
    content = proto.content
    if proto.content_parts:
        if content:
            raise InvalidArgument(f"{where}.content_parts", "set content or content_parts, not both")
        content = "".join(
            _part_text(part, f"{where}.content_parts[{j}]") for j, part in enumerate(proto.content_parts)
        )
    return Message(
        role=role,
        content=content,
        name=proto.name or None,
        tool_calls=tuple(
            ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
            for call in proto.tool_calls
        ),
        tool_call_id=proto.tool_call_id or None,
    )


def _part_text(part: message_pb2.ContentPart, where: str) -> str:
    kind = part.WhichOneof("kind")
    if kind == "text":
        return part.text
    if kind == "image":
        raise InvalidArgument(
            f"{where}.image", "this model reads text only (no MODEL_CAPABILITY_VISION): send text parts"
        )
    raise InvalidArgument(where, "set text or image")


def messages(protos: Iterable[ChatMessage], field: str = "messages") -> tuple[Message, ...]:
    return tuple(message(proto, f"{field}[{i}]") for i, proto in enumerate(protos))


def tools(protos: Iterable[Tool]) -> tuple[ToolSpec, ...]:
    return tuple(
        ToolSpec(
            name=tool.function.name,
            description=tool.function.description,
            parameters_json=tool.function.parameters_json or NO_PARAMETERS_SCHEMA,
        )
        for tool in protos
    )


def _check_response_format(proto: ResponseFormat, field: str) -> None:
    kind = proto.WhichOneof("format")
    if kind is not None:
        raise Unimplemented(
            f"{field}: constrained output ({kind}) is not available on this server yet; leave it unset"
        )


def _check_tool_choice(proto: ToolChoice, field: str) -> None:
    kind = proto.WhichOneof("choice")
    if kind == "mode" and proto.mode in (
        generation_pb2.TOOL_CHOICE_MODE_UNSPECIFIED,
        generation_pb2.TOOL_CHOICE_MODE_NONE,
    ):
        return
    if kind is not None:
        raise Unimplemented(f"{field}: tool calling is not available on this server yet; leave it unset")


def _truncate(value: int) -> bool:
    if value in (generation_pb2.TRUNCATION_UNSPECIFIED, generation_pb2.TRUNCATION_DISABLED):
        return False
    if value == generation_pb2.TRUNCATION_DROP_OLDEST:
        return True
    raise InvalidArgument("truncation", f"{value} is not a Truncation value")


def prompt_options(
    tool_protos: Iterable[Tool], truncation: int, options: ChatTemplateOptions | None
) -> PromptOptions:
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    if options is not None:
        if options.HasField("add_generation_prompt"):
            add_generation_prompt = options.add_generation_prompt
        if options.HasField("continue_final_message"):
            continue_final_message = options.continue_final_message
        if options.HasField("variables") and options.variables.fields:
            raise Unimplemented(
                "template_options.variables: extra template variables are not supported yet; leave it unset"
            )
    return PromptOptions(
        tools=tools(tool_protos),
        truncate=_truncate(truncation),
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
    )


def sampling(proto: ChatCompletionRequest | CompletionRequestProto | GenerationParams) -> SamplingOverrides:
    """The sampling fields the client set, by SamplingParams field name."""
    out: dict[str, Any] = {}
    if proto.HasField("temperature"):
        out["temperature"] = proto.temperature
    if proto.HasField("top_p"):
        out["top_p"] = proto.top_p
    if proto.HasField("top_k"):
        out["top_k"] = proto.top_k
    if proto.HasField("min_p"):
        out["min_p"] = proto.min_p
    if proto.HasField("max_tokens"):
        out["max_tokens"] = proto.max_tokens
    if proto.HasField("min_tokens"):
        out["min_tokens"] = proto.min_tokens
    if proto.HasField("seed"):
        out["seed"] = proto.seed
    if proto.HasField("frequency_penalty"):
        out["frequency_penalty"] = proto.frequency_penalty
    if proto.HasField("presence_penalty"):
        out["presence_penalty"] = proto.presence_penalty
    if proto.HasField("repetition_penalty"):
        out["repetition_penalty"] = proto.repetition_penalty
    if proto.HasField("top_logprobs"):
        out["top_logprobs"] = proto.top_logprobs
    if proto.HasField("ignore_eos"):
        out["ignore_eos"] = proto.ignore_eos
    if isinstance(proto, GenerationParams):
        if proto.HasField("logprobs"):
            out["logprobs"] = proto.logprobs
    elif proto.logprobs:
        out["logprobs"] = True
    if proto.stop:
        out["stop"] = tuple(proto.stop)
    if proto.stop_token_ids:
        out["stop_token_ids"] = tuple(proto.stop_token_ids)
    if proto.logit_bias:
        out["logit_bias"] = dict(proto.logit_bias)
    return out


def _n(proto: ChatCompletionRequest | CompletionRequestProto) -> int:
    if not proto.HasField("n"):
        return 1
    if proto.n < 1:
        raise InvalidArgument("n", f"must be >= 1, got {proto.n}")
    return proto.n


def chat_request(proto: ChatCompletionRequest) -> ChatRequest:
    if proto.HasField("response_format"):
        _check_response_format(proto.response_format, "response_format")
    if proto.HasField("tool_choice"):
        _check_tool_choice(proto.tool_choice, "tool_choice")
    options = proto.template_options if proto.HasField("template_options") else None
    return ChatRequest(
        model=proto.model,
        messages=messages(proto.messages),
        sampling=sampling(proto),
        n=_n(proto),
        prompt=prompt_options(proto.tools, proto.truncation, options),
        user=proto.user,
    )


def render_request(proto: RenderPromptRequest) -> RenderRequest:
    options = proto.template_options if proto.HasField("template_options") else None
    return RenderRequest(
        model=proto.model,
        messages=messages(proto.messages),
        max_tokens=proto.max_tokens if proto.HasField("max_tokens") else None,
        prompt=prompt_options(proto.tools, proto.truncation, options),
    )


def completion_request(proto: CompletionRequestProto) -> CompletionRequest:
    if proto.HasField("response_format"):
        _check_response_format(proto.response_format, "response_format")
    return CompletionRequest(
        model=proto.model,
        text=proto.prompt,
        token_ids=tuple(proto.prompt_token_ids),
        sampling=sampling(proto),
        n=_n(proto),
        parse_special_tokens=proto.parse_special_tokens if proto.HasField("parse_special_tokens") else True,
        add_bos=proto.add_bos if proto.HasField("add_bos") else None,
        user=proto.user,
    )


def model_name(proto: GetModelRequest) -> str:
    return proto.name


def tokenize_request(proto: TokenizeRequestProto) -> TokenizeRequest:
    return TokenizeRequest(proto.model, proto.text, proto.parse_special_tokens, proto.add_special_tokens)


def detokenize_request(proto: DetokenizeRequestProto) -> DetokenizeRequest:
    return DetokenizeRequest(proto.model, tuple(proto.token_ids), proto.skip_special_tokens)


def _generation_params(proto: GenerationParams, field: str) -> SamplingOverrides:
    if proto.HasField("response_format"):
        _check_response_format(proto.response_format, f"{field}.response_format")
    if proto.HasField("tool_choice"):
        _check_tool_choice(proto.tool_choice, f"{field}.tool_choice")
    return sampling(proto)


def session_opening(proto: SessionStart) -> SessionOpening:
    history = messages(proto.history, "start.history")
    if proto.system_prompt:
        if any(m.role is Role.SYSTEM for m in history):
            raise InvalidArgument(
                "start.system_prompt", "set system_prompt or a system message in history, not both"
            )
        history = (Message(Role.SYSTEM, proto.system_prompt), *history)
    if proto.tools:
        raise Unimplemented("start.tools: tool calling is not available on this server yet; leave it unset")
    options = proto.template_options if proto.HasField("template_options") else None
    prompt = prompt_options((), proto.truncation, options)
    defaults = _generation_params(proto.defaults, "start.defaults") if proto.HasField("defaults") else {}
    return SessionOpening(model=proto.model, history=history, defaults=defaults, prompt=prompt)


def session_turn(proto: SessionUser) -> SessionTurn:
    overrides = _generation_params(proto.params, "user.params") if proto.HasField("params") else {}
    return SessionTurn(
        request_id=proto.request_id, messages=messages(proto.messages, "user.messages"), overrides=overrides
    )


SessionMessage = SessionOpening | SessionTurn | SessionCancel


def session_request(proto: ChatSessionRequest) -> SessionMessage:
    """One client message of a Chat session; InvalidArgument when none of start, user, cancel is set."""
    kind = proto.WhichOneof("kind")
    if kind == "start":
        return session_opening(proto.start)
    if kind == "user":
        return session_turn(proto.user)
    if kind == "cancel":
        return SessionCancel(proto.cancel.request_id)
    raise InvalidArgument("kind", "a session message must set start, user or cancel")


def session_request_id(proto: ChatSessionRequest) -> str:
    """The turn a client message is about, for answering it even when it does not convert."""
    kind = proto.WhichOneof("kind")
    if kind == "user":
        return proto.user.request_id
    if kind == "cancel":
        return proto.cancel.request_id
    return ""


def is_session_start(proto: ChatSessionRequest) -> bool:
    return proto.WhichOneof("kind") == "start"
