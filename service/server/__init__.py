"""The gRPC edge: servicers, the protobuf conversion layer, the status table and the server's lifecycle.

Only this package imports grpc or the generated parley.v1 modules; everything it calls takes and returns
plain dataclasses.
"""
