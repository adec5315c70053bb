"""Python client for Parley (parley.v1): typed sync and asyncio clients over the generated stubs.

from parley_client import ParleyClient

with ParleyClient("127.0.0.1:50051") as client:
    print(client.chat([("user", "Hello!")], temperature=0).choices[0].message.content)
"""

from parley_client.aio import AsyncParleyClient
from parley_client.aio_session import AsyncChatSession, AsyncSessionTurn
from parley_client.call_settings import CallSettings, Metadata, MetadataLike
from parley_client.client import ParleyClient
from parley_client.errors import (
    FieldViolation,
    ParleyError,
    ParleyRpcError,
    SessionEndedError,
    error_from_rpc_error,
    error_from_status,
)
from parley_client.messages import (
    MessageLike,
    RoleLike,
    RoleName,
    image_part,
    message,
    text_part,
    to_message,
    to_messages,
    to_role,
    tool_call,
)
from parley_client.options import (
    ChatOptions,
    CompletionOptions,
    GenerationOptions,
    RenderOptions,
    SamplingOptions,
    build_chat_request,
    build_completion_request,
    build_generation_params,
    build_render_request,
    force_function,
    function_tool,
    json_object_format,
    json_schema_format,
)
from parley_client.sync_session import ChatSession, SessionTurn

__all__ = [
    "AsyncChatSession",
    "AsyncParleyClient",
    "AsyncSessionTurn",
    "CallSettings",
    "ChatOptions",
    "ChatSession",
    "CompletionOptions",
    "FieldViolation",
    "GenerationOptions",
    "MessageLike",
    "Metadata",
    "MetadataLike",
    "ParleyClient",
    "ParleyError",
    "ParleyRpcError",
    "RenderOptions",
    "RoleLike",
    "RoleName",
    "SamplingOptions",
    "SessionEndedError",
    "SessionTurn",
    "build_chat_request",
    "build_completion_request",
    "build_generation_params",
    "build_render_request",
    "error_from_rpc_error",
    "error_from_status",
    "force_function",
    "function_tool",
    "image_part",
    "json_object_format",
    "json_schema_format",
    "message",
    "text_part",
    "to_message",
    "to_messages",
    "to_role",
    "tool_call",
]
