"""Conversation validation: each failure an InvalidArgument that names the field and says why."""

from __future__ import annotations

import pytest

from service.errors import InvalidArgument
from service.requests import Message, Role, ToolCall, ToolSpec
from service.templates import TemplateRules
from service.templates.validation import validate_conversation, validate_tools

TOOLS_RULES = TemplateRules(tools=True)
U = Message(Role.USER, "hi")
A = Message(Role.ASSISTANT, "hello")
CALL = Message(Role.ASSISTANT, "", tool_calls=(ToolCall("c1", "get_weather", '{"city": "Paris"}'),))
ANSWER = Message(Role.TOOL, "18 degrees", tool_call_id="c1")


def check(
    messages: list[Message], rules: TemplateRules = TOOLS_RULES, *, continue_final: bool = False
) -> None:
    validate_conversation(messages, rules, "test", continue_final=continue_final)


@pytest.mark.parametrize(
    "messages",
    [
        [U],
        [Message(Role.SYSTEM, "be kind"), U, A, U],
        [U, CALL, ANSWER],
        [U, CALL, ANSWER, A, U],
        [
            U,
            Message(Role.ASSISTANT, "", tool_calls=(*CALL.tool_calls, ToolCall("c2", "f", "{}"))),
            ANSWER,
            Message(Role.TOOL, "", tool_call_id="c2"),
        ],
    ],
    ids=["one-user", "system-first", "tool-round-trip", "tool-then-chat", "two-calls-empty-result"],
)
def test_valid_conversations(messages: list[Message]) -> None:
    check(messages)


@pytest.mark.parametrize(
    ("messages", "field", "reason"),
    [
        ([], "messages", "at least one message"),
        ([U, Message(Role.SYSTEM, "late")], "messages[1].role", "only allowed as the first message"),
        ([Message(Role.USER, "")], "messages[0].content", "must not be empty"),
        ([Message(Role.SYSTEM, ""), U], "messages[0].content", "must not be empty"),
        ([U, Message(Role.ASSISTANT, ""), U], "messages[1].content", "needs content or tool calls"),
        ([Message(Role.USER, "x", name="")], "messages[0].name", "must not be empty when set"),
        ([Message(Role.USER, "x", tool_call_id="c1")], "messages[0].tool_call_id", "only tool messages"),
        ([Message(Role.USER, "x", tool_calls=CALL.tool_calls)], "messages[0].tool_calls", "only assistant"),
        ([U, ANSWER], "messages[1].role", "must follow the assistant message that called the tool"),
        (
            [U, CALL, Message(Role.TOOL, "x")],
            "messages[2].tool_call_id",
            "must name the tool call it answers",
        ),
        (
            [U, CALL, Message(Role.TOOL, "x", tool_call_id="c9")],
            "messages[2].tool_call_id",
            "'c9' does not name",
        ),
        ([U, CALL, ANSWER, ANSWER], "messages[3].tool_call_id", "answered twice"),
        ([U, CALL, ANSWER, CALL], "messages[3].tool_calls[0].id", "'c1' is used twice"),
        (
            [U, Message(Role.ASSISTANT, "", tool_calls=(ToolCall("", "f", "{}"),))],
            "messages[1].tool_calls[0].id",
            "must not be empty",
        ),
        (
            [U, Message(Role.ASSISTANT, "", tool_calls=(ToolCall("c1", "", "{}"),))],
            "messages[1].tool_calls[0].name",
            "must not be empty",
        ),
        (
            [U, Message(Role.ASSISTANT, "", tool_calls=(ToolCall("c1", "f", "{'a': 1}"),))],
            "messages[1].tool_calls[0].arguments",
            "is not valid JSON",
        ),
        (
            [U, Message(Role.ASSISTANT, "", tool_calls=(ToolCall("c1", "f", "[1]"),))],
            "messages[1].tool_calls[0].arguments",
            "must be a JSON object, got list",
        ),
        ([Message(Role.SYSTEM, "only a system prompt")], "messages[0].role", "last message to come from"),
    ],
    ids=[
        "empty",
        "late-system",
        "empty-user",
        "empty-system",
        "empty-assistant",
        "empty-name",
        "tool-call-id-on-user",
        "tool-calls-on-user",
        "tool-without-call",
        "tool-without-id",
        "tool-unknown-id",
        "tool-answered-twice",
        "call-id-reused",
        "call-empty-id",
        "call-empty-name",
        "call-bad-json",
        "call-not-object",
        "system-only",
    ],
)
def test_invalid_conversations(messages: list[Message], field: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason) as raised:
        check(messages)
    assert raised.value.field == field


def test_tool_calls_need_a_template_that_renders_them() -> None:
    with pytest.raises(InvalidArgument, match="does not render tool calls") as raised:
        check([U, CALL, ANSWER], TemplateRules())
    assert raised.value.field == "messages[1].tool_calls"


@pytest.mark.parametrize(
    ("continue_final", "messages", "field", "reason"),
    [
        (True, [U], "messages[0].role", "only a final assistant message can be continued"),
        (True, [U, CALL], "messages[1].tool_calls", "with tool calls cannot be continued"),
    ],
    ids=["continue-user", "continue-tool-call"],
)
def test_continuation_rules(continue_final: bool, messages: list[Message], field: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason) as raised:
        check(messages, continue_final=continue_final)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("tools", "rules", "field", "reason"),
    [
        ([ToolSpec("f", "", "{}")], TemplateRules(), "tools", "does not render tools"),
        ([ToolSpec("", "", "{}")], TOOLS_RULES, "tools[0].name", "must not be empty"),
        (
            [ToolSpec("f", "", "{}"), ToolSpec("f", "", "{}")],
            TOOLS_RULES,
            "tools[1].name",
            "'f' is defined twice",
        ),
        ([ToolSpec("f", "", "{")], TOOLS_RULES, "tools[0].parameters", "is not valid JSON"),
    ],
    ids=["unsupported", "empty-name", "duplicate", "bad-schema"],
)
def test_invalid_tools(tools: list[ToolSpec], rules: TemplateRules, field: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason) as raised:
        validate_tools(tools, rules, "test")
    assert raised.value.field == field
