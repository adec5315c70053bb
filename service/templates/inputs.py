"""Messages and tools as a Jinja chat template sees them: the dicts an OpenAI-compatible client would hand to
transformers' `apply_chat_template`.

Every string the client supplied passes through a `TextHook` on its way in, with the name of its request
field. Rendering once with the identity hook gives the real prompt; rendering again with a `Marker` gives the
same prompt with a placeholder in place of each client string, which is how the prompt is split into
template text and client text (see splitting.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.requests import Message, Role, ToolSpec

TextHook = Callable[[str, str], str]  # (client text, its request field) -> what the template receives

PLACEHOLDER_OPEN = "\ue000"  # Unicode private-use characters: no tokenizer gives them meaning
PLACEHOLDER_CLOSE = "\ue001"


def as_is(value: str, field: str) -> str:
    return value


@dataclass(frozen=True)
class ClientText:
    field: str
    value: str


class Marker:
    """A TextHook that swaps each non-empty client string for `\\ue000<n>\\ue001` and remembers it.

    Placeholders are digits between private-use characters, so case changes and trimming leave them intact.
    Empty strings pass through: they carry nothing, and templates that test `if message.content` then see
    the same truth value in both renders.
    """

    def __init__(self) -> None:
        self.texts: list[ClientText] = []

    def __call__(self, value: str, field: str) -> str:
        if not value:
            return value
        self.texts.append(ClientText(field, value))
        return f"{PLACEHOLDER_OPEN}{len(self.texts) - 1}{PLACEHOLDER_CLOSE}"


def _json_value(value: Any, field: str, text: TextHook) -> Any:
    if isinstance(value, str):
        return text(value, field)
    if isinstance(value, dict):
        return {text(key, field): _json_value(item, field, text) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_value(item, field, text) for item in value]
    return value


def template_messages(
    messages: Sequence[Message],
    text: TextHook,
    *,
    developer_as_system: bool,
    final_content_suffix: str = "",
) -> list[dict[str, Any]]:
    """The `messages` variable. Keys a client did not set are left out (transformers drops None values), and
    tool-call arguments are parsed into objects, as vLLM does for Hugging Face templates."""
    rendered: list[dict[str, Any]] = []
    last = len(messages) - 1
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = Role.SYSTEM if developer_as_system and message.role is Role.DEVELOPER else message.role
        content = message.content + (final_content_suffix if i == last else "")
        entry: dict[str, Any] = {"role": role.value, "content": text(content, f"{where}.content")}
        if message.name is not None:
            entry["name"] = text(message.name, f"{where}.name")
        if message.tool_calls:
            entry["tool_calls"] = [
                {
                    "id": text(call.id, f"{where}.tool_calls[{j}].id"),
                    "type": "function",
                    "function": {
                        "name": text(call.name, f"{where}.tool_calls[{j}].name"),
                        "arguments": _json_value(
                            json.loads(call.arguments), f"{where}.tool_calls[{j}].arguments", text
                        ),
                    },
                }
                for j, call in enumerate(message.tool_calls)
            ]
        if message.tool_call_id is not None:
            entry["tool_call_id"] = text(message.tool_call_id, f"{where}.tool_call_id")
        rendered.append(entry)
    return rendered


def template_tools(tools: Sequence[ToolSpec], text: TextHook) -> list[dict[str, Any]] | None:
    """The `tools` variable in OpenAI's shape; None when there are none (templates test `if tools`)."""
    if not tools:
        return None
    specs: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        function: dict[str, Any] = {"name": text(tool.name, f"tools[{i}].name")}
        if tool.description:
            function["description"] = text(tool.description, f"tools[{i}].description")
        function["parameters"] = _json_value(json.loads(tool.parameters_json), f"tools[{i}].parameters", text)
        specs.append({"type": "function", "function": function})
    return specs


def client_strings(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> list[ClientText]:
    """Every string the client supplied, with its field: what strict mode inspects."""
    marker = Marker()
    template_messages(messages, marker, developer_as_system=False)
    template_tools(tools, marker)
    return marker.texts
