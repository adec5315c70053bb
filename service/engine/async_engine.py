"""The asyncio face of the engine: submit a request, iterate its events; leaving early cancels it.

Events cross from the engine thread to the event loop through one mailbox per loop: the engine thread
appends, and wakes the loop only when the mailbox was empty. A decode step that produces events for
eight streams thus costs one wake-up, not eight — the loop shares two cores with ONNX Runtime, so every
wake-up it saves is CPU the model gets back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator

from service.engine.engine import Engine
from service.engine.events import EngineEvent, GenerationRequest, RequestFailed, RequestFinished


class _Mailbox:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[EngineEvent], EngineEvent]] = []

    def post(self, queue: asyncio.Queue[EngineEvent], event: EngineEvent) -> None:
        """Engine thread: queue an event; schedule one delivery if none is pending."""
        with self._lock:
            wake = not self._pending
            self._pending.append((queue, event))
        if wake:
            with contextlib.suppress(RuntimeError):  # the event loop is closed (shutdown): nobody listens
                self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, event in pending:
            queue.put_nowait(event)


class AsyncEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._mailboxes: dict[asyncio.AbstractEventLoop, _Mailbox] = {}
        self._lock = threading.Lock()  # loops on different threads may share one engine (tests)

    def _mailbox(self) -> _Mailbox:
        loop = asyncio.get_running_loop()
        with self._lock:
            mailbox = self._mailboxes.get(loop)
            if mailbox is None:
                self._mailboxes = {lp: mb for lp, mb in self._mailboxes.items() if not lp.is_closed()}
                mailbox = self._mailboxes[loop] = _Mailbox(loop)
        return mailbox

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        """Events of one request, ending with RequestFinished or RequestFailed. If the consumer stops
        early (client cancelled, deadline), the request is cancelled in the engine at once."""
        mailbox = self._mailbox()
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()

        def sink(event: EngineEvent) -> None:  # runs on the engine thread
            mailbox.post(events, event)

        self.engine.submit(request, sink)
        ended = False
        try:
            while True:
                event = await events.get()
                ended = isinstance(event, RequestFinished | RequestFailed)
                yield event
                if ended:
                    return
        finally:
            if not ended:
                self.engine.cancel(request.request_id)
