"""Parley: a gRPC service that serves chat completions from a local language model."""
