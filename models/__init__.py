"""Model preparation: GGUF -> ONNX Runtime model directory (graph, tokenizer, model card)."""
