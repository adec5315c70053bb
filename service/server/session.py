"""ChatService.Chat: a conversation kept on the server over one bidirectional stream (session.proto).

Two tasks per call: the reader takes client messages (start, user, cancel) as they arrive, so a cancel
reaches a running turn at once; the worker runs the turns one at a time in order. Both put responses on one
outbox that the handler yields from. Each turn resubmits the whole conversation: the engine finds the
longest prefix still in its KV cache (the previous turns) and prefills only the rest, which it reports as
cached_tokens. An idle session holds no slot: its parked K/V is reclaimed when others need it, and the next
turn simply prefills more.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace

from parley.v1.session_pb2 import ChatSessionRequest, ChatSessionResponse

from service.engine.events import ChoiceFinished, FinishReason, RequestFailed, RequestFinished, TokenEvent
from service.errors import FailedPrecondition, InvalidArgument, ParleyError
from service.requests import Message, Role
from service.server.convert import inbound, outbound
from service.server.generation import CallInfo, engine_deadline
from service.server.requests import SessionCancel, SessionOpening, SessionTurn
from service.server.rpc import Context
from service.server.served_model import ModelRegistry, ServedModel
from service.server.status import abort, rpc_status

log = logging.getLogger(__name__)

_Outgoing = ChatSessionResponse | ParleyError | None  # an error ends the call; None ends it cleanly


@dataclass
class _Turn:
    request: SessionTurn
    id: str
    cancelled: bool = False
    engine_id: str = ""  # set once submitted


class Session:
    def __init__(self, registry: ModelRegistry, context: Context) -> None:
        self.id = uuid.uuid4().hex[:16]
        self._registry = registry
        self._context = context
        self.outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._turns: asyncio.Queue[_Turn | None] = asyncio.Queue()
        self._queued: dict[str, _Turn] = {}
        self._running: _Turn | None = None
        self._used_ids: set[str] = set()
        self._numbers = itertools.count(1)
        self._opening: SessionOpening | None = None
        self._model: ServedModel | None = None
        self.history: list[Message] = []

    # --- the reader ------------------------------------------------------------------------------
    async def read(self, requests: AsyncIterator[ChatSessionRequest]) -> None:
        try:
            async for proto in requests:
                request_id = inbound.session_request_id(proto)
                try:
                    if self._opening is None and not inbound.is_session_start(proto):
                        self._open(SessionOpening())  # a first `user` starts with the server's defaults
                    self._accept(inbound.session_request(proto))
                except ParleyError as error:
                    if self._opening is None:  # a session that cannot start ends the call
                        self.outbox.put_nowait(error)
                        return
                    self.outbox.put_nowait(outbound.session_error(request_id, rpc_status(error)))
        finally:
            self._turns.put_nowait(None)  # no more turns: the worker finishes the queued ones and ends

    def _accept(self, message: SessionOpening | SessionTurn | SessionCancel) -> None:
        if isinstance(message, SessionOpening):
            if self._opening is not None:
                raise FailedPrecondition("start: the session has already started; open a new Chat call")
            self._open(message)
        elif isinstance(message, SessionTurn):
            self._enqueue(message)
        else:
            self._cancel(message.request_id)

    def _open(self, opening: SessionOpening) -> None:
        model = self._registry.get(opening.model, field="start.model")
        model.sampling(opening.defaults, chat=True)  # bad defaults fail the start, not every turn
        # Generation-prompt handling is automatic in a session: answer a user, continue an assistant.
        prompt = replace(opening.prompt, add_generation_prompt=None, continue_final_message=None)
        self._opening, self._model = replace(opening, prompt=prompt), model
        self.history = list(opening.history)
        idle = model.config.session_idle_seconds
        self.outbox.put_nowait(outbound.session_started(self.id, model.name, model.context_window, idle))
        log.info("session %s started on %s", self.id, model.name)

    def _enqueue(self, request: SessionTurn) -> None:
        turn_id = request.request_id or f"turn-{next(self._numbers)}"
        if turn_id in self._used_ids:
            raise InvalidArgument("user.request_id", f"{turn_id!r} was already used in this session")
        if not request.messages:
            raise InvalidArgument("user.messages", "a turn needs at least one message")
        self._used_ids.add(turn_id)
        turn = _Turn(request, turn_id)
        self._queued[turn_id] = turn
        self._turns.put_nowait(turn)

    def _cancel(self, request_id: str) -> None:
        running = self._running
        if running is not None and request_id in ("", running.id):
            running.cancelled = True
            if running.engine_id and self._model is not None:
                self._model.engine.cancel(running.engine_id)
        elif request_id in self._queued:
            self._queued[request_id].cancelled = True
        # Anything else has finished already or never existed: ignored, as the protocol says.

    # --- the worker ------------------------------------------------------------------------------
    async def work(self) -> None:
        try:
            while (turn := await self._turns.get()) is not None:
                self._queued.pop(turn.id, None)
                self._running = turn
                try:
                    await self._run(turn)
                except Exception as error:  # the turn fails, the session lives on (rpc_status logs bugs)
                    self.outbox.put_nowait(outbound.session_error(turn.id, rpc_status(error)))
                finally:
                    self._running = None
        finally:
            self.outbox.put_nowait(None)

    async def _run(self, turn: _Turn) -> None:
        model, opening = self._model, self._opening
        assert model is not None and opening is not None  # a turn is queued only once the session opened
        if turn.cancelled:  # cancelled while queued: never runs, its messages are not added
            self.outbox.put_nowait(outbound.session_done(turn.id, FinishReason.CANCELLED, ""))
            return
        conversation = [*self.history, *turn.request.messages]
        sampling = model.sampling(opening.defaults, turn.request.overrides, chat=True)
        fitted = model.render(conversation, opening.prompt, max_tokens=sampling.max_tokens)
        model.check_serving()
        call = CallInfo.new("chatcmpl", model.name, model.fingerprint)
        turn.engine_id = f"{call.id}-{turn.id}"
        deadline = engine_deadline(self._context.time_remaining())
        generation = model.generation(turn.engine_id, fitted.prompt.token_ids, sampling, deadline=deadline)
        reply: list[str] = []
        ending: ChoiceFinished | None = None
        first = True
        async with model.events(generation) as events:
            async for event in events:
                if isinstance(event, TokenEvent | ChoiceFinished):
                    reply.append(event.text)
                    ending = event if isinstance(event, ChoiceFinished) else ending
                    chunk = outbound.chat_chunk(call, event, model.speller, first=first)
                    if chunk is not None:
                        first = False
                        self.outbox.put_nowait(outbound.session_chunk(turn.id, chunk))
                elif isinstance(event, RequestFinished):
                    assert ending is not None  # a request finishes after its choices
                    text = "".join(reply)
                    if text or fitted.messages[-1].role is Role.ASSISTANT:
                        self.history = _with_reply(list(fitted.messages), text)
                    # else an empty reply (cancelled before its first token, or an immediate end of
                    # turn) would leave an assistant message without content, which the next turn's
                    # validation rejects: such a turn leaves the conversation as it was.
                    log.info("session %s turn %s: %s", self.id, turn.id, event.usage)
                    self.outbox.put_nowait(
                        outbound.session_done(
                            turn.id,
                            ending.reason,
                            text,
                            matched_stop=ending.matched_stop,
                            finished=event,
                            dropped=fitted.dropped_messages,
                        )
                    )
                elif isinstance(event, RequestFailed):
                    raise event.error


def _with_reply(conversation: list[Message], text: str) -> list[Message]:
    """The conversation after a turn: the reply appended, or a continued assistant message extended."""
    last = conversation[-1]
    if last.role is Role.ASSISTANT:
        return [*conversation[:-1], replace(last, content=last.content + text)]
    return [*conversation, Message(Role.ASSISTANT, text)]


async def run_session(
    registry: ModelRegistry, requests: AsyncIterator[ChatSessionRequest], context: Context
) -> AsyncGenerator[ChatSessionResponse, None]:
    """The Chat handler. Ends when the client half-closes and every queued turn is done; a client that
    cancels (or whose deadline passes) ends it at once, and with it the running generation."""
    await context.send_initial_metadata(())
    session = Session(registry, context)
    tasks = [asyncio.create_task(session.read(requests)), asyncio.create_task(session.work())]
    try:
        while (item := await session.outbox.get()) is not None:
            if isinstance(item, ParleyError):
                await abort(context, item)
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("session %s ended", session.id)
