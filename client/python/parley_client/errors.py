"""The client's error type: a gRPC status code, its message and the google.rpc details decoded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field, from a google.rpc.BadRequest detail."""

    field: str  # the field's path in the request, e.g. `messages[2].content`
    description: str  # what is wrong, e.g. `top_p must be in (0, 1], got 1.5`
    reason: str = ""  # a machine-readable reason code, when the server sent one


class ParleyError(Exception):
    """Base of the errors this client raises."""


class ParleyRpcError(ParleyError):
    """A call failed with a gRPC status. `status` holds the server's google.rpc.Status when it sent one."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_delay: float | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.field_violations = field_violations
        self.retry_delay = retry_delay  # seconds, from a google.rpc.RetryInfo detail
        self.status = status

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        for violation in self.field_violations:
            if violation.description not in self.message:
                text += f"\n  {violation.field}: {violation.description}"
        return text


class SessionEndedError(ParleyError):
    """A Chat session's stream ended while a turn still expected responses."""


_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The StatusCode of a google.rpc.Code number (an unknown number is UNKNOWN)."""
    return _CODES_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def error_from_status(status: status_pb2.Status) -> ParleyRpcError:
    """Decode a google.rpc.Status (a session `error`, or the rich status of a failed call)."""
    violations: list[FieldViolation] = []
    retry_delay: float | None = None
    for detail in status.details:  # Any.Unpack is False when the detail is of another type
        bad_request = error_details_pb2.BadRequest()
        retry_info = error_details_pb2.RetryInfo()
        if detail.Unpack(bad_request):
            violations.extend(
                FieldViolation(field=v.field, description=v.description, reason=v.reason)
                for v in bad_request.field_violations
            )
        elif detail.Unpack(retry_info):
            retry_delay = retry_info.retry_delay.ToTimedelta().total_seconds()
    return ParleyRpcError(
        status_code(status.code),
        status.message,
        field_violations=tuple(violations),
        retry_delay=retry_delay,
        status=status,
    )


def error_from_rpc_error(error: grpc.RpcError) -> ParleyRpcError:
    """Decode a failed call (sync or grpc.aio), with its google.rpc details when the server sent them."""
    # Both grpc's sync errors and grpc.aio.AioRpcError carry code(), details() and trailing_metadata().
    if not callable(getattr(error, "code", None)):
        return ParleyRpcError(grpc.StatusCode.UNKNOWN, str(error))
    call = cast(grpc.Call, error)
    code, message = call.code(), call.details() or ""
    try:
        rich = rpc_status.from_call(call)
    except ValueError:  # the rich status contradicts the call's status: trust the call's
        rich = None
    if not isinstance(rich, status_pb2.Status):
        return ParleyRpcError(code, message)
    decoded = error_from_status(rich)
    return ParleyRpcError(
        code,
        message,
        field_violations=decoded.field_violations,
        retry_delay=decoded.retry_delay,
        status=rich,
    )
