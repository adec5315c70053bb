"""Parley's error hierarchy. Every layer raises these; the gRPC edge maps them to status codes in one table.

Nothing here imports grpc: templates, engine, sampler and scheduler raise plain exceptions.
"""

from __future__ import annotations


class ParleyError(Exception):
    """Base of every error Parley reports to a caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ParleyError):
    """A request field is wrong. `field` is its path in the request, e.g. `messages[2].content`."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(ParleyError):
    """A named thing (model, session request id) does not exist."""


class ResourceExhausted(ParleyError):
    """Admission refused: queue full, too many tokens in cache, or a size limit."""


class FailedPrecondition(ParleyError):
    """The server is not in a state to do this (not warm yet, draining)."""


class Unavailable(ParleyError):
    """The server cannot take requests now but will (warming up, draining, engine restarting): retry.

    FailedPrecondition, by contrast, is a state the caller must change (e.g. a second session `start`).
    """


class Unimplemented(ParleyError):
    """A request feature the contract carries but this build does not honour yet."""


class DeadlineExceeded(ParleyError):
    """The request's deadline passed before it could finish."""


class Cancelled(ParleyError):
    """The caller cancelled the request."""


class EngineFailure(ParleyError):
    """The engine failed while running this request (not the caller's fault)."""


class ModelError(ParleyError):
    """A model file or model directory is unusable: corrupt, truncated, unsupported or inconsistent."""
