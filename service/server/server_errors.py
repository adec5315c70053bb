"""Errors the server raises beyond service/errors.py (no gRPC here: status.py maps them to codes).

`Unavailable` belongs in service/errors.py beside FailedPrecondition; it lives here until it moves.
"""

from __future__ import annotations

from service.errors import ParleyError


class Unavailable(ParleyError):
    """The server cannot take requests now but will (warming up, draining, engine restarting): retry.

    FailedPrecondition, by contrast, is a state the caller must change (e.g. a second session `start`).
    """
