# fused_attn developer commands. Each target creates .venv and installs what it
# needs, so `make bench` and `make test` work on a fresh clone.
#
#   make bench   set up, build (CPU kernels only when no GPU is visible), run the op
#                microbenchmark (python -m bench.ops: fused vs eager vs torch.compile vs copy;
#                BENCH_ARGS="--full", "--op se", ... pass through)
#   make test    set up, build, run the whole test suite
#   make build   (re)build the extension in place
#   make cmake   build the extension with CMake and smoke-test the library
#   make clean

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
export MAX_JOBS

# One environment for everything: torch (the registry's default build), the
# test and model dependencies, and the build tools.
DEPS := torch torchvision timm numpy matplotlib pytest hypothesis ninja setuptools wheel

.PHONY: bench test build cmake clean venv

$(VENV)/.deps: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(DEPS)
	touch $@

venv: $(VENV)/.deps

build: venv
	$(PIP) install --no-build-isolation --no-deps -e .

# Without a visible GPU, bench builds the CPU kernels only: CUDA objects could
# not run here and would take most of the build time.
bench: venv
	@if $(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
	  $(PIP) install --no-build-isolation --no-deps -e .; \
	else \
	  echo "make bench: no GPU visible, building the CPU kernels only"; \
	  FUSED_ATTN_NO_CUDA=1 $(PIP) install --no-build-isolation --no-deps -e .; \
	fi
	$(PY) -m bench.ops $(BENCH_ARGS)

test: build
	$(PY) -m pytest -q $(PYTEST_ARGS)

cmake: venv
	$(PY) tools/cmake_build.py

clean:
	rm -rf build *.egg-info fused_attn/*.so $(VENV)
