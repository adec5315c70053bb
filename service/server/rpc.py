"""What every handler shares: errors become statuses (status.py's table), streams send headers at once."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc

from service.server.status import abort

Context = grpc.aio.ServicerContext[Any, Any]

_Self = TypeVar("_Self")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def unary(
    handler: Callable[[_Self, _Request, Context], Awaitable[_Response]],
) -> Callable[[_Self, _Request, Context], Coroutine[Any, Any, _Response]]:
    """A unary handler whose errors end the call with their status and details."""

    @functools.wraps(handler)
    async def wrapped(self: _Self, request: _Request, context: Context) -> _Response:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # ParleyErrors get their code; anything else is logged as INTERNAL
            await abort(context, error)

    return wrapped


def streaming(
    handler: Callable[[_Self, _Request, Context], AsyncGenerator[_Response, None]],
) -> Callable[[_Self, _Request, Context], AsyncGenerator[_Response, None]]:
    """A response-streaming handler: headers go out before the first (possibly slow) message, and errors
    end the call with their status and details."""

    @functools.wraps(handler)
    async def wrapped(self: _Self, request: _Request, context: Context) -> AsyncGenerator[_Response, None]:
        await context.send_initial_metadata(())
        try:
            async with contextlib.aclosing(handler(self, request, context)) as responses:
                async for response in responses:
                    yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort(context, error)

    return wrapped
