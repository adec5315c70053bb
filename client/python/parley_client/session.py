"""The transport-free half of the Chat session helpers: session requests, and responses routed to turns.

A session carries many turns over one stream. The server sends every response of a turn with the
turn's request_id; the client always names its turns, so it can hand each turn exactly its responses,
in order, even when a caller reads the turns out of order.
"""

from __future__ import annotations

import uuid
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence

from parley.v1.chat_pb2 import ChatCompletionChunk
from parley.v1.generation_pb2 import ChatTemplateOptions, GenerationParams, Tool
from parley.v1.session_pb2 import (
    ChatSessionRequest,
    ChatSessionResponse,
    SessionCancel,
    SessionDone,
    SessionStart,
    SessionStarted,
    SessionUser,
)

from parley_client.errors import ParleyError, error_from_status
from parley_client.messages import MessageLike, to_messages
from parley_client.options import TruncationLike, to_truncation

SESSION_KEY = ""  # the request_id of responses about the session itself (`started`, session errors)


def new_request_id() -> str:
    """A fresh, unique turn id."""
    return uuid.uuid4().hex


def start_request(
    *,
    model: str = "",
    system_prompt: str = "",
    history: Iterable[MessageLike] = (),
    tools: Sequence[Tool] = (),
    truncation: TruncationLike | None = None,
    template_options: ChatTemplateOptions | None = None,
    defaults: GenerationParams | None = None,
) -> ChatSessionRequest:
    """The `start` message that opens a session."""
    start = SessionStart(
        model=model,
        system_prompt=system_prompt,
        history=to_messages(history),
        tools=tools,
        defaults=defaults,
        template_options=template_options,
    )
    if truncation is not None:
        start.truncation = to_truncation(truncation)
    return ChatSessionRequest(start=start)


def user_request(
    messages: Iterable[MessageLike] | str, *, request_id: str, params: GenerationParams | None = None
) -> ChatSessionRequest:
    """A `user` turn; a lone string is one user message."""
    if not request_id:
        raise ValueError("a session turn needs a request_id (new_request_id() makes one)")
    return ChatSessionRequest(
        user=SessionUser(messages=to_messages(messages), request_id=request_id, params=params)
    )


def cancel_request(request_id: str) -> ChatSessionRequest:
    """A `cancel` of one turn (an empty id cancels the running turn)."""
    return ChatSessionRequest(cancel=SessionCancel(request_id=request_id))


class ResponseRouter:
    """Buffers responses that arrive for turns other than the one being read."""

    def __init__(self) -> None:
        self._waiting: defaultdict[str, deque[ChatSessionResponse]] = defaultdict(deque)

    def take(self, request_id: str) -> ChatSessionResponse | None:
        """The oldest buffered response for this turn, or None."""
        queue = self._waiting.get(request_id)
        if not queue:
            return None
        response = queue.popleft()
        if not queue:
            del self._waiting[request_id]
        return response

    def accept(self, response: ChatSessionResponse, request_id: str) -> bool:
        """True when the response is for the turn being read (or about the session); else buffer it."""
        if response.request_id in (request_id, SESSION_KEY):
            return True
        self._waiting[response.request_id].append(response)
        return False


def started_event(response: ChatSessionResponse) -> SessionStarted:
    """The `started` answer to `start`; a session error raises ParleyRpcError."""
    kind = response.WhichOneof("kind")
    if kind == "started":
        return response.started
    if kind == "error":
        raise error_from_status(response.error)
    raise ParleyError(f"the server answered `start` with `{kind}` instead of `started`")


def turn_event(response: ChatSessionResponse, request_id: str) -> ChatCompletionChunk | SessionDone:
    """A turn's next chunk, or its `done`; an `error` for the turn (or the session) raises ParleyRpcError."""
    kind = response.WhichOneof("kind")
    if kind == "chunk":
        return response.chunk
    if kind == "done":
        return response.done
    if kind == "error":
        raise error_from_status(response.error)
    raise ParleyError(f"turn {request_id}: unexpected `{kind}` response from the server")
