"""Benchmarks beside llama.cpp; setup_llamacpp.sh builds llama.cpp's environment (bench/.venv-llamacpp)."""
