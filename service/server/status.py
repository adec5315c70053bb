"""The one table from Parley's errors to gRPC status codes, with google.rpc details.

A client's mistake is never UNKNOWN or INTERNAL: every error a request can cause is a ParleyError subclass
with its own code here. INTERNAL is kept for the server's own failures (a crashed engine, a bug), which
are logged with their traceback.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from service.errors import (
    Cancelled,
    DeadlineExceeded,
    EngineFailure,
    FailedPrecondition,
    InvalidArgument,
    ModelError,
    NotFound,
    ParleyError,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1  # advertised in RetryInfo when admission is refused


# Ordered most specific first: an error takes the code of the first class it is an instance of.
STATUS_CODES: tuple[tuple[type[ParleyError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (EngineFailure, grpc.StatusCode.INTERNAL),
    (ModelError, grpc.StatusCode.INTERNAL),
)


def status_code(error: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS_CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _packed(detail: error_details_pb2.BadRequest | error_details_pb2.RetryInfo) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def rpc_status(error: BaseException) -> status_pb2.Status:
    """The google.rpc.Status of an error: BadRequest for a bad field, RetryInfo when admission refused."""
    code = status_code(error)
    if not isinstance(error, ParleyError):
        log.error("unexpected error", exc_info=error)
        return status_pb2.Status(code=code_pb2.INTERNAL, message=f"internal error: {type(error).__name__}")
    status = status_pb2.Status(code=code.value[0], message=error.message)
    if isinstance(error, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.reason)
        status.details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    elif isinstance(error, ResourceExhausted):
        delay = duration_pb2.Duration(seconds=RETRY_AFTER_SECONDS)
        status.details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    if code == grpc.StatusCode.INTERNAL:
        log.error("server failure: %s", error.message)
    return status


GRPC_DETAILS_KEY = "grpc-status-details-bin"


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: BaseException) -> NoReturn:
    """End the call with the error's status and details (raises, as ServicerContext.abort does)."""
    status = rpc_status(error)
    await context.abort(
        status_code(error),
        status.message,
        trailing_metadata=((GRPC_DETAILS_KEY, status.SerializeToString()),),
    )
