"""Requests the server refuses: each with its status code and, for a bad field, a BadRequest naming it."""

from __future__ import annotations

import grpc
import pytest
from parley.v1 import message_pb2
from parley.v1.chat_pb2 import ChatCompletionRequest
from parley.v1.chat_service_pb2_grpc import ChatServiceStub
from parley.v1.message_pb2 import ChatMessage
from parley_client import (
    MessageLike,
    ParleyClient,
    ParleyRpcError,
    build_chat_request,
    error_from_rpc_error,
    function_tool,
    image_part,
    json_object_format,
    message,
    text_part,
)

from tests.server.conftest import KV_CAPACITY

HELLO: list[MessageLike] = [("user", "Hello!")]


def refused(stub: ChatServiceStub, request: ChatCompletionRequest) -> ParleyRpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateChatCompletion(request, timeout=30)
    return error_from_rpc_error(caught.value)


def unspecified_role() -> ChatCompletionRequest:
    request = build_chat_request(HELLO)
    request.messages.append(ChatMessage(content="who am I?"))
    return request


def content_and_parts() -> ChatCompletionRequest:
    request = build_chat_request(HELLO)
    request.messages[0].content_parts.append(text_part("also this"))
    return request


def image_content() -> ChatCompletionRequest:
    parts = [text_part("What is in this picture?"), image_part(url="https://example.com/cat.png")]
    return build_chat_request([message("user", parts=parts)])


def unknown_truncation() -> ChatCompletionRequest:
    request = build_chat_request(HELLO)
    request.truncation = 7  # type: ignore[assignment]  # an enum value this server does not know
    return request


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (unspecified_role, "messages[1].role"),
        (content_and_parts, "messages[0].content_parts"),
        (image_content, "messages[0].content_parts[1].image"),
        (unknown_truncation, "truncation"),
        (lambda: build_chat_request([]), "messages"),
    ],
    ids=["role_unset", "content_and_parts", "image_part", "truncation", "no_messages"],
)
def test_bad_messages_name_the_field(chat_stub: ChatServiceStub, build: object, field: str) -> None:
    error = refused(chat_stub, build())  # type: ignore[operator]
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == [field]
    assert error.message.startswith(field)


def test_image_parts_are_refused_for_a_text_only_model(chat_stub: ChatServiceStub) -> None:
    error = refused(chat_stub, image_content())
    assert "MODEL_CAPABILITY_VISION" in error.message


@pytest.mark.parametrize(
    ("options", "feature"),
    [
        ({"tools": [function_tool("get_weather", "The weather in a city", {"type": "object"})]}, "tools"),
        ({"response_format": json_object_format()}, "response_format"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
    ids=["tools", "response_format", "tool_choice"],
)
def test_features_not_honoured_yet_are_unimplemented(
    client: ParleyClient, options: dict[str, object], feature: str
) -> None:
    with pytest.raises(ParleyRpcError, match=f"{feature}: .* not available on this server yet") as caught:
        client.chat(HELLO, **options)  # type: ignore[arg-type]
    assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED


def test_tool_choice_none_is_the_default_and_accepted(client: ParleyClient) -> None:
    reply = client.chat(HELLO, tool_choice="none", max_tokens=1)
    assert reply.usage.completion_tokens == 1


def test_a_prompt_longer_than_the_window_reports_both_counts(client: ParleyClient) -> None:
    long_text = "tell me about apples and pears " * 60
    prompt_tokens = len(client.tokenize(long_text).token_ids)
    with pytest.raises(ParleyRpcError, match=rf"the prompt is \d+ tokens .* {KV_CAPACITY} tokens") as caught:
        client.chat([("user", long_text)], max_tokens=4)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == ["messages"]
    assert prompt_tokens > KV_CAPACITY


def test_drop_oldest_truncation_drops_whole_early_turns(client: ParleyClient) -> None:
    filler = "apples and pears " * 45  # about 135 tokens per turn: two turns overflow 256
    conversation: list[MessageLike] = [
        ("system", "Be brief."),
        ("user", "First: " + filler),
        ("assistant", "Noted."),
        ("user", "Second: " + filler),
        ("assistant", "Noted again."),
        ("user", "What did I say last?"),
    ]
    with pytest.raises(ParleyRpcError, match="context window"):
        client.render_prompt(conversation, max_tokens=16)
    rendered = client.render_prompt(conversation, max_tokens=16, truncation="drop_oldest")
    assert rendered.dropped_messages == 2
    assert "First:" not in rendered.text and "Second:" in rendered.text
    assert rendered.text.startswith("<|im_start|>system\nBe brief.")
    assert len(rendered.token_ids) + 16 <= KV_CAPACITY
    reply = client.chat(conversation, max_tokens=4, temperature=0, truncation="drop_oldest")
    assert reply.dropped_messages == 2
    assert reply.usage.prompt_tokens == len(rendered.token_ids)


def test_truncation_disabled_lets_max_tokens_run_into_the_window(client: ParleyClient) -> None:
    reply = client.chat(HELLO, max_tokens=KV_CAPACITY * 2, temperature=0)
    assert reply.usage.completion_tokens < KV_CAPACITY  # no error: the window ends the reply if need be


def test_developer_messages_render_as_system_messages(client: ParleyClient) -> None:
    developer = client.render_prompt([message(message_pb2.ROLE_DEVELOPER, "Be brief."), ("user", "hi")])
    assert developer.text.startswith("<|im_start|>system\nBe brief.")  # developer renders as system
