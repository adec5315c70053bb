"""The Python client's request building: messages, options, tools and session requests."""

from __future__ import annotations

import json
from typing import Any, get_type_hints

import pytest
from google.protobuf.message import Message
from google.rpc import status_pb2
from parley.v1 import chat_pb2, completion_pb2, generation_pb2, message_pb2, model_pb2, session_pb2
from parley_client import (
    ChatOptions,
    CompletionOptions,
    GenerationOptions,
    ParleyError,
    ParleyRpcError,
    RenderOptions,
    build_chat_request,
    build_completion_request,
    build_generation_params,
    build_render_request,
    force_function,
    function_tool,
    image_part,
    json_schema_format,
    message,
    to_messages,
    to_role,
    tool_call,
)
from parley_client.options import apply_options, chat_request_from
from parley_client.session import (
    ResponseRouter,
    cancel_request,
    start_request,
    started_event,
    turn_event,
    user_request,
)

from service.requests import Role as ServiceRole


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("system", message_pb2.ROLE_SYSTEM),
        ("user", message_pb2.ROLE_USER),
        ("assistant", message_pb2.ROLE_ASSISTANT),
        ("tool", message_pb2.ROLE_TOOL),
        ("developer", message_pb2.ROLE_DEVELOPER),
        (ServiceRole.ASSISTANT, message_pb2.ROLE_ASSISTANT),
        (message_pb2.ROLE_TOOL, message_pb2.ROLE_TOOL),
    ],
    ids=["system", "user", "assistant", "tool", "developer", "service-enum", "proto-enum"],
)
def test_roles_by_name_or_value(role: Any, expected: int) -> None:
    assert to_role(role) == expected


@pytest.mark.parametrize(
    ("role", "error"),
    [("User", "unknown role 'User'"), (0, "unknown role value 0"), (42, "unknown role value 42")],
    ids=["capitalised", "unspecified", "out-of-range"],
)
def test_bad_roles_are_named(role: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        to_role(role)


def test_messages_from_pairs_strings_and_protos() -> None:
    ready = message("tool", "42", tool_call_id="call-1")
    built = to_messages([("system", "Be brief."), ("user", "Hi"), ready])
    assert [(m.role, m.content) for m in built] == [
        (message_pb2.ROLE_SYSTEM, "Be brief."),
        (message_pb2.ROLE_USER, "Hi"),
        (message_pb2.ROLE_TOOL, "42"),
    ]
    assert built[2].tool_call_id == "call-1"
    assert to_messages("Hello") == [message_pb2.ChatMessage(role=message_pb2.ROLE_USER, content="Hello")]


def test_a_malformed_message_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"a message must be a ChatMessage or a \(role, content\) pair"):
        to_messages([("user",)])  # type: ignore[list-item]


def test_content_parts_and_tool_calls() -> None:
    parts = message("user", parts=[image_part(url="https://example.invalid/cat.png")])
    assert parts.content_parts[0].image.url == "https://example.invalid/cat.png"
    assert parts.content_parts[0].image.WhichOneof("source") == "url"
    assistant = message("assistant", tool_calls=[tool_call("call-1", "add", '{"a": 1}')])
    assert assistant.tool_calls[0].function.name == "add"
    with pytest.raises(ValueError, match="either content or parts"):
        message("user", "text", parts=[image_part(data=b"\x89PNG")])
    with pytest.raises(ValueError, match="exactly one of url and data"):
        image_part()


def test_chat_request_options_set_fields_and_presence() -> None:
    request = build_chat_request(
        [("user", "Hi")],
        model="smollm2",
        temperature=0.0,
        top_k=1,
        seed=0,
        stop=["\n\n", "END"],
        logit_bias={2: -100.0},
        logprobs=True,
        top_logprobs=3,
        n=2,
        tools=[function_tool("add", "Adds.", {"type": "object"})],
        tool_choice="required",
        truncation="drop_oldest",
        response_format=json_schema_format({"type": "object"}, name="answer"),
        template_options=generation_pb2.ChatTemplateOptions(continue_final_message=True),
        top_p=None,  # None leaves a field unset
    )
    assert request.model == "smollm2"
    # Zero is a value, not "unset": temperature 0 (greedy) and seed 0 are present.
    assert request.HasField("temperature") and request.temperature == 0.0
    assert request.HasField("seed") and request.seed == 0
    assert not request.HasField("top_p") and not request.HasField("max_tokens")
    assert list(request.stop) == ["\n\n", "END"] and dict(request.logit_bias) == {2: -100.0}
    assert (request.logprobs, request.top_logprobs, request.n, request.top_k) == (True, 3, 2, 1)
    assert request.tools[0].function.name == "add"
    assert json.loads(request.tools[0].function.parameters_json) == {"type": "object"}
    assert request.tool_choice.mode == generation_pb2.TOOL_CHOICE_MODE_REQUIRED
    assert request.truncation == generation_pb2.TRUNCATION_DROP_OLDEST
    assert request.response_format.json_schema.name == "answer"
    assert request.template_options.HasField("continue_final_message")


def test_forcing_one_function() -> None:
    request = build_chat_request("Add 1 and 2", tool_choice=force_function("add"))
    assert request.tool_choice.WhichOneof("choice") == "function_name"
    assert request.tool_choice.function_name == "add"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"tool_choice": "always"}, "unknown tool_choice 'always'"),
        ({"truncation": "oldest"}, "unknown truncation 'oldest'"),
    ],
    ids=["tool-choice", "truncation"],
)
def test_bad_option_values_are_named(options: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        build_chat_request("Hi", **options)


def test_an_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="ChatCompletionRequest has no option 'temprature'"):
        apply_options(chat_pb2.ChatCompletionRequest(), {"temprature": 0.5})


def test_a_ready_request_is_used_as_is_but_not_mixed_with_options() -> None:
    ready = build_chat_request("Hi", max_tokens=3)
    assert chat_request_from(ready, "", {}) is ready
    with pytest.raises(TypeError, match="either a ChatCompletionRequest or model/options"):
        chat_request_from(ready, "", {"temperature": 0.1})


def test_completion_request_from_text_or_token_ids() -> None:
    text = build_completion_request("Once upon", max_tokens=5, parse_special_tokens=False)
    assert text.prompt == "Once upon" and not text.prompt_token_ids
    assert text.HasField("parse_special_tokens") and not text.parse_special_tokens
    ids = build_completion_request([1, 2, 3], ignore_eos=True)
    assert list(ids.prompt_token_ids) == [1, 2, 3] and ids.prompt == "" and ids.ignore_eos


def test_render_request_carries_what_shapes_the_prompt() -> None:
    render = build_render_request([("user", "Hi")], model="m", max_tokens=9, truncation="drop_oldest")
    assert isinstance(render, model_pb2.RenderPromptRequest)
    assert (render.model, render.max_tokens, render.truncation) == (
        "m",
        9,
        generation_pb2.TRUNCATION_DROP_OLDEST,
    )


@pytest.mark.parametrize(
    ("options", "request_type"),
    [
        (ChatOptions, chat_pb2.ChatCompletionRequest),
        (CompletionOptions, completion_pb2.CompletionRequest),
        (GenerationOptions, generation_pb2.GenerationParams),
        (RenderOptions, model_pb2.RenderPromptRequest),
    ],
    ids=["chat", "completion", "session", "render"],
)
def test_every_keyword_option_is_a_field_of_its_request(options: type, request_type: type[Message]) -> None:
    assert set(get_type_hints(options)) <= set(request_type.DESCRIPTOR.fields_by_name)


def test_session_requests() -> None:
    start = start_request(
        model="m",
        system_prompt="Be brief.",
        history=[("user", "Hi"), ("assistant", "Hello")],
        truncation="drop_oldest",
        defaults=build_generation_params(temperature=0.0, logprobs=False),
    )
    assert start.WhichOneof("kind") == "start"
    assert [m.content for m in start.start.history] == ["Hi", "Hello"]
    assert start.start.defaults.HasField("temperature") and start.start.defaults.HasField("logprobs")
    assert start.start.truncation == generation_pb2.TRUNCATION_DROP_OLDEST
    assert start_request() == session_pb2.ChatSessionRequest(start=session_pb2.SessionStart())
    user = user_request("Next?", request_id="t1", params=build_generation_params(max_tokens=4))
    assert (user.user.request_id, user.user.messages[0].content, user.user.params.max_tokens) == (
        "t1",
        "Next?",
        4,
    )
    assert cancel_request("t1").cancel.request_id == "t1"
    with pytest.raises(ValueError, match="needs a request_id"):
        user_request("Hi", request_id="")


def _chunk(request_id: str, text: str) -> session_pb2.ChatSessionResponse:
    delta = chat_pb2.Delta(content=text)
    chunk = chat_pb2.ChatCompletionChunk(choices=[chat_pb2.ChunkChoice(delta=delta)])
    return session_pb2.ChatSessionResponse(request_id=request_id, chunk=chunk)


def test_router_hands_each_turn_its_own_responses_in_order() -> None:
    router = ResponseRouter()
    arrivals = [_chunk("a", "a1"), _chunk("b", "b1"), _chunk("a", "a2"), _chunk("b", "b2")]
    read_for_b = [r for r in arrivals if router.accept(r, "b")]
    assert [r.chunk.choices[0].delta.content for r in read_for_b] == ["b1", "b2"]
    buffered_a = [router.take("a"), router.take("a"), router.take("a")]
    assert [r.chunk.choices[0].delta.content if r else None for r in buffered_a] == ["a1", "a2", None]
    session_error = session_pb2.ChatSessionResponse(error=status_pb2.Status(code=9, message="second start"))
    assert router.accept(session_error, "b")  # session-level responses go to whoever reads


def test_turn_events_and_started() -> None:
    done = session_pb2.ChatSessionResponse(request_id="a", done=session_pb2.SessionDone())
    assert isinstance(turn_event(done, "a"), session_pb2.SessionDone)
    assert turn_event(_chunk("a", "x"), "a").choices[0].delta.content == "x"  # type: ignore[union-attr]
    failed = session_pb2.ChatSessionResponse(
        request_id="a", error=status_pb2.Status(code=3, message="bad turn")
    )
    with pytest.raises(ParleyRpcError, match="INVALID_ARGUMENT: bad turn"):
        turn_event(failed, "a")
    started = session_pb2.ChatSessionResponse(started=session_pb2.SessionStarted(session_id="s"))
    assert started_event(started).session_id == "s"
    with pytest.raises(ParleyError, match="answered `start` with `chunk`"):
        started_event(_chunk("", "x"))
