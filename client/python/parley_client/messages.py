"""Building chat messages: roles by name, (role, content) pairs, content parts and tool calls."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, TypeAlias

from parley.v1 import message_pb2
from parley.v1.message_pb2 import ChatMessage, ContentPart, ImagePart, Role, ToolCall

RoleName: TypeAlias = Literal["system", "user", "assistant", "tool", "developer"]
RoleLike: TypeAlias = RoleName | Role.ValueType
# A message as a (role, content) pair, e.g. ("user", "Hello"), or a ready ChatMessage.
MessageLike: TypeAlias = ChatMessage | tuple[RoleLike, str]

ROLES_BY_NAME: dict[str, Role.ValueType] = {
    "system": message_pb2.ROLE_SYSTEM,
    "user": message_pb2.ROLE_USER,
    "assistant": message_pb2.ROLE_ASSISTANT,
    "tool": message_pb2.ROLE_TOOL,
    "developer": message_pb2.ROLE_DEVELOPER,
}


def to_role(role: RoleLike) -> Role.ValueType:
    """A role from its lower-case name (`"user"`) or the enum value itself (`ROLE_USER`)."""
    if isinstance(role, str):
        try:
            return ROLES_BY_NAME[role]
        except KeyError:
            names = ", ".join(ROLES_BY_NAME)
            raise ValueError(f"unknown role {role!r}; expected one of {names}") from None
    if role not in Role.values() or role == message_pb2.ROLE_UNSPECIFIED:
        raise ValueError(f"unknown role value {role}; expected a ROLE_* value other than ROLE_UNSPECIFIED")
    return role


def message(
    role: RoleLike,
    content: str = "",
    *,
    name: str = "",
    tool_calls: Sequence[ToolCall] = (),
    tool_call_id: str = "",
    parts: Sequence[ContentPart] = (),
) -> ChatMessage:
    """One chat message. Give either `content` (text) or `parts` (text and image parts), not both."""
    if content and parts:
        raise ValueError("give either content or parts, not both")
    return ChatMessage(
        role=to_role(role),
        content=content,
        name=name,
        tool_calls=tool_calls,
        tool_call_id=tool_call_id,
        content_parts=parts,
    )


def to_message(item: MessageLike) -> ChatMessage:
    """A ChatMessage from a (role, content) pair; a ChatMessage is returned as is."""
    if isinstance(item, ChatMessage):
        return item
    if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str)):
        raise TypeError(f"a message must be a ChatMessage or a (role, content) pair, got {item!r}")
    role, content = item
    return message(role, content)


def to_messages(items: Iterable[MessageLike] | str) -> list[ChatMessage]:
    """Messages from pairs or ChatMessages; a lone string is one user message."""
    if isinstance(items, str):
        return [message("user", items)]
    return [to_message(item) for item in items]


def text_part(text: str) -> ContentPart:
    """A text content part."""
    return ContentPart(text=text)


def image_part(
    *,
    url: str = "",
    data: bytes = b"",
    mime_type: str = "",
    detail: message_pb2.ImageDetail.ValueType = message_pb2.IMAGE_DETAIL_UNSPECIFIED,
) -> ContentPart:
    """An image content part from a URL or from the encoded file's bytes (exactly one)."""
    if bool(url) == bool(data):
        raise ValueError("give exactly one of url and data")
    image = ImagePart(mime_type=mime_type, detail=detail)
    if url:
        image.url = url
    else:
        image.data = data
    return ContentPart(image=image)


def tool_call(call_id: str, name: str, arguments: str) -> ToolCall:
    """A function call as the assistant made it (for history sent back to the model)."""
    return ToolCall(id=call_id, function=message_pb2.FunctionCall(name=name, arguments=arguments))
