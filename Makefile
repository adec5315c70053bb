# Parley — every entry point a user or CI needs. `make run` and `make test` work on a bare machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 50051
VENV := .venv
PY := $(VENV)/bin/python
PARLEY := $(VENV)/bin/parley
SETUP_STAMP := $(VENV)/.parley-setup
PROTOS := $(sort $(wildcard proto/parley/v1/*.proto))
STUBS_STAMP := client/python/parley/.generated
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
BUF_VERSION := 1.75.0
PYTEST_ARGS ?=

.PHONY: help setup proto model run test lint typecheck buf-lint pytest bench bench-quick bench-llamacpp clean

help:
	@echo "make run    set up, prepare the default model, serve it on $(HOST):$(PORT) (PORT=N for another)"
	@echo "make test   set up, prepare the default model, run lint, type checks and every test"
	@echo "make model  prepare the default model into models/store/smollm2-135m-instruct/"
	@echo "make bench  benchmarks side by side with llama.cpp (bench/results/)"

# --- set-up --------------------------------------------------------------------------------------
$(SETUP_STAMP): pyproject.toml client/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# compat mode: a path entry, so the stubs generated into client/python/parley after this install
	# are importable (the default editable finder only maps packages that exist at install time).
	$(PY) -m pip install --quiet -e client/python --config-settings editable_mode=compat
	touch $@

# Python stubs are generated from the .proto files, never edited by hand (client/python/parley/ is ignored).
$(STUBS_STAMP): $(PROTOS) client/python/generate_stubs.py $(SETUP_STAMP)
	$(PY) client/python/generate_stubs.py --proto-root proto --out client/python
	touch $@

# Parley's ONNX Runtime custom ops, compiled for this machine's CPU (the runner decodes with them).
KERNELS := service/engine/kernels/build/libparley_ops.so
$(KERNELS): service/engine/kernels/parley_ops.c service/engine/kernels/build.py $(SETUP_STAMP)
	$(PY) -m service.engine.kernels.build --force

setup: $(SETUP_STAMP) $(STUBS_STAMP) $(KERNELS)

proto: setup

model: setup
	$(PARLEY) prepare

run: model
	$(PARLEY) serve --host $(HOST) --port $(PORT)

# --- checks --------------------------------------------------------------------------------------
$(BUF):
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@$(BUF_VERSION)

buf-lint: $(BUF)
	$(BUF) lint proto

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

pytest: model
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: setup model buf-lint lint typecheck pytest

# --- benchmarks ----------------------------------------------------------------------------------
# llama.cpp (llama-cpp-python) is built into its own environment, bench/.venv-llamacpp, once (~6-13 min).
bench-llamacpp:
	bench/setup_llamacpp.sh

bench: model bench-llamacpp
	$(PY) -m bench.run

bench-quick: model bench-llamacpp
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) $(TOOLS) client/python/parley models/store service/engine/kernels/build .mypy_cache .ruff_cache .pytest_cache
