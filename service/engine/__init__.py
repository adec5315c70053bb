"""The inference engine: ONNX Runtime session, KV cache slots, continuous batching (no gRPC here)."""
