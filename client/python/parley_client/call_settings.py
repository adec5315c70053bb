"""Per-client call defaults (deadline, metadata, wait-for-ready) and their per-call overrides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

# gRPC metadata: (key, value) pairs; keys lower-case, binary values under keys ending in `-bin`.
Metadata: TypeAlias = tuple[tuple[str, str | bytes], ...]
MetadataLike: TypeAlias = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class CallSettings:
    """What every call of one client sends unless the call says otherwise."""

    timeout: float | None = None  # seconds until the deadline; None: no deadline
    metadata: Metadata = ()  # sent with every call, e.g. (("authorization", "Bearer ..."),)
    wait_for_ready: bool | None = None  # True: wait for the server instead of failing fast with UNAVAILABLE

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout}")

    def call_timeout(self, timeout: float | None) -> float | None:
        """The call's own timeout (seconds) when given, else the client's."""
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        return self.timeout if timeout is None else timeout

    def call_metadata(self, metadata: MetadataLike) -> Metadata:
        """The client's metadata followed by the call's own."""
        return self.metadata + tuple(metadata)
