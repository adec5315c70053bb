"""The one place where protobuf meets Parley's plain types: requests in (inbound), responses out (outbound,
models). Servicers call these and never read or build protobuf fields themselves."""

from service.server.convert import inbound, models, outbound

__all__ = ["inbound", "models", "outbound"]
