"""Conversation checks made before any rendering, in the manner of MLC LLM's message validation: each failure
is an InvalidArgument that names the offending field and says why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from service.errors import InvalidArgument
from service.requests import Message, Role, ToolSpec
from service.templates.types import TemplateRules

_SYSTEM_ROLES = frozenset({Role.SYSTEM, Role.DEVELOPER})


def developer_as_system(messages: Sequence[Message]) -> list[Message]:
    """OpenAI's developer role is the system role for templates that do not know it."""
    return [replace(m, role=Role.SYSTEM) if m.role is Role.DEVELOPER else m for m in messages]


def parse_json_object(text: str, field: str) -> dict[str, Any]:
    """Parse JSON text that must hold an object (tool parameters, tool-call arguments)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(field, f"is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(field, f"must be a JSON object, got {type(value).__name__}")
    return value


def _role_list(roles: frozenset[Role]) -> str:
    return ", ".join(role.value for role in Role if role in roles)


def validate_tools(tools: Sequence[ToolSpec], rules: TemplateRules, template: str) -> None:
    if tools and not rules.tools:
        raise InvalidArgument("tools", f"the '{template}' chat template does not render tools")
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if not tool.name:
            raise InvalidArgument(f"tools[{i}].name", "must not be empty")
        if tool.name in seen:
            raise InvalidArgument(f"tools[{i}].name", f"'{tool.name}' is defined twice")
        seen.add(tool.name)
        parse_json_object(tool.parameters_json, f"tools[{i}].parameters")


def _check_role(message: Message, i: int, rules: TemplateRules, template: str) -> None:
    where, role = f"messages[{i}]", message.role
    if role not in rules.roles:
        raise InvalidArgument(
            f"{where}.role",
            f"the '{template}' chat template has no {role.value} role "
            f"(it renders: {_role_list(rules.roles)})",
        )
    if role in _SYSTEM_ROLES and i > 0:
        raise InvalidArgument(f"{where}.role", f"a {role.value} message is only allowed as the first message")


def _check_fields(message: Message, where: str) -> None:
    role = message.role
    if message.name is not None and not message.name:
        raise InvalidArgument(f"{where}.name", "must not be empty when set")
    if message.tool_call_id is not None and role is not Role.TOOL:
        raise InvalidArgument(f"{where}.tool_call_id", "only tool messages answer a tool call")
    if message.tool_calls and role is not Role.ASSISTANT:
        raise InvalidArgument(f"{where}.tool_calls", "only assistant messages carry tool calls")
    if role in (Role.USER, *_SYSTEM_ROLES) and not message.content:
        raise InvalidArgument(f"{where}.content", "must not be empty")
    if role is Role.ASSISTANT and not message.content and not message.tool_calls:
        raise InvalidArgument(f"{where}.content", "an assistant message needs content or tool calls")


class _ToolCallLedger:
    """Tool calls made so far and which of them a tool message has answered."""

    def __init__(self, rules: TemplateRules, template: str) -> None:
        self._rules, self._template = rules, template
        self._open: set[str] = set()
        self._answered: set[str] = set()

    def calls(self, message: Message, where: str) -> None:
        if not self._rules.tools:
            raise InvalidArgument(
                f"{where}.tool_calls", f"the '{self._template}' chat template does not render tool calls"
            )
        for j, call in enumerate(message.tool_calls):
            field = f"{where}.tool_calls[{j}]"
            if not call.id:
                raise InvalidArgument(f"{field}.id", "must not be empty")
            if call.id in self._open or call.id in self._answered:
                raise InvalidArgument(f"{field}.id", f"'{call.id}' is used twice")
            if not call.name:
                raise InvalidArgument(f"{field}.name", "must not be empty")
            parse_json_object(call.arguments, f"{field}.arguments")
            self._open.add(call.id)

    def answer(self, message: Message, previous: Message | None, where: str) -> None:
        if previous is None or not (previous.role is Role.TOOL or previous.tool_calls):
            raise InvalidArgument(
                f"{where}.role", "a tool message must follow the assistant message that called the tool"
            )
        call_id = message.tool_call_id
        if not call_id:
            raise InvalidArgument(
                f"{where}.tool_call_id", "a tool message must name the tool call it answers"
            )
        if call_id in self._answered:
            raise InvalidArgument(f"{where}.tool_call_id", f"tool call '{call_id}' is answered twice")
        if call_id not in self._open:
            raise InvalidArgument(f"{where}.tool_call_id", f"'{call_id}' does not name an earlier tool call")
        self._open.remove(call_id)
        self._answered.add(call_id)


def validate_conversation(
    messages: Sequence[Message],
    rules: TemplateRules,
    template: str,
    *,
    continue_final: bool,
) -> None:
    """Check roles, ordering, contents and tool-call bookkeeping against the template's rules."""
    if not messages:
        raise InvalidArgument("messages", "must contain at least one message")
    ledger = _ToolCallLedger(rules, template)
    expected_turn = Role.USER  # the next role, for templates that need user/assistant to alternate
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        _check_role(message, i, rules, template)
        if rules.alternate and message.role not in _SYSTEM_ROLES:
            if message.role is not expected_turn:
                raise InvalidArgument(
                    f"{where}.role",
                    f"expected {'an' if expected_turn is Role.ASSISTANT else 'a'} {expected_turn.value} "
                    f"message: the '{template}' chat template needs "
                    "user and assistant messages to alternate, starting with the user",
                )
            expected_turn = Role.ASSISTANT if message.role is Role.USER else Role.USER
        _check_fields(message, where)
        if message.tool_calls:
            ledger.calls(message, where)
        if message.role is Role.TOOL:
            ledger.answer(message, messages[i - 1] if i > 0 else None, where)
    last, where = messages[-1], f"messages[{len(messages) - 1}]"
    if last.role not in rules.final_roles:
        raise InvalidArgument(
            f"{where}.role",
            f"the '{template}' chat template needs the last message to come from: "
            f"{_role_list(rules.final_roles)} (got {last.role.value})",
        )
    if continue_final and last.role is not Role.ASSISTANT:
        raise InvalidArgument(f"{where}.role", "only a final assistant message can be continued")
    if continue_final and last.tool_calls:
        raise InvalidArgument(
            f"{where}.tool_calls", "a final assistant message with tool calls cannot be continued"
        )
