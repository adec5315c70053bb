"""The asyncio face of the engine: submit a request, iterate its events; leaving early cancels it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from service.engine.engine import Engine
from service.engine.events import EngineEvent, GenerationRequest, RequestFailed, RequestFinished


class AsyncEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        """Events of one request, ending with RequestFinished or RequestFailed. If the consumer stops
        early (client cancelled, deadline), the request is cancelled in the engine at once."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()

        def sink(event: EngineEvent) -> None:  # runs on the engine thread
            with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown): nobody listens
                loop.call_soon_threadsafe(events.put_nowait, event)

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
