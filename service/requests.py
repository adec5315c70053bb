"""Plain request types shared by templates, scheduler and engine. The gRPC edge converts protobuf into
these (and only there); nothing below the edge sees a protobuf message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"
    DEVELOPER = "developer"


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model produced or the client sent it


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # set on tool messages: the call this message answers


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call: name, description and its parameters as a JSON Schema (JSON text)."""

    name: str
    description: str
    parameters_json: str
