"""The status table: every error a request can cause has its own code, with google.rpc details."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from service import errors
from service.errors import Unavailable
from service.server.status import rpc_status, status_code


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (
            errors.InvalidArgument("messages[2].content", "must not be empty"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (errors.NotFound("no model named 'x'"), grpc.StatusCode.NOT_FOUND),
        (errors.ResourceExhausted("256 requests are already queued"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Unavailable("warming up"), grpc.StatusCode.UNAVAILABLE),
        (errors.FailedPrecondition("start: already started"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Unimplemented("tools: not yet"), grpc.StatusCode.UNIMPLEMENTED),
        (errors.DeadlineExceeded("passed while queued"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Cancelled("by the caller"), grpc.StatusCode.CANCELLED),
        (errors.EngineFailure("the model run failed"), grpc.StatusCode.INTERNAL),
        (ValueError("a bug"), grpc.StatusCode.INTERNAL),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value.name,
)
def test_each_error_has_its_code(error: Exception, code: grpc.StatusCode) -> None:
    assert status_code(error) == code
    assert rpc_status(error).code == code.value[0]


def test_invalid_argument_carries_the_field_violation() -> None:
    status = rpc_status(errors.InvalidArgument("messages[2].content", "must not be empty"))
    assert status.message == "messages[2].content: must not be empty"
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("messages[2].content", "must not be empty")
    ]


def test_refused_admission_says_when_to_retry() -> None:
    status = rpc_status(errors.ResourceExhausted("queue full"))
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.seconds == 1


def test_a_bug_reveals_no_internals() -> None:
    status = rpc_status(KeyError("secret path /srv/models"))
    assert status.code == code_pb2.INTERNAL
    assert "secret" not in status.message
