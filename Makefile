# fused_attn developer commands. Each target creates .venv and installs what it
# needs, so `make bench` and `make test` work on a fresh clone.
#
#   make bench   set up, build (CPU kernels only when no GPU is visible), run the op
#                microbenchmark (python -m bench.ops: fused vs eager vs torch.compile vs copy;
#                BENCH_ARGS="--full", "--op se", ... pass through)
#   make test    set up, build, run the whole test suite (on TEST_JOBS xdist workers)
#   make build   (re)build the extension in place
#   make cmake   build the extension with CMake and smoke-test the library
#   make test-floor  the oldest torch we support (2.11, the GPU machine's): its own
#                venv (.venv-floor) and a copy of the tracked tree (build/floor), the
#                CPU kernels built against it, then the suite ($(FLOOR_TESTS))
#   make test-newest  the newest torch release on PyPI, whatever this machine's pip
#                configuration caps: its own venv (.venv-newest), a copy of the tracked
#                tree (build/newest) built against it (the CUDA sources too, for sm_90,
#                when nvcc is on the PATH), then the suite ($(NEWEST_TESTS))
#   make triton-check  every Triton kernel variant the ops launch, compiled for sm_90 without a
#                GPU (the interpreter never compiles them) by the GPU machine's triton (the
#                floor venv's 3.6), and checked by Inductor's mutation analysis and for what a
#                launch needs (shared memory, registers, spills); then compiled again for an
#                AMD MI300 (hip:gfx942)
#   make ptxas-report  each CUDA kernel's registers, spills and shared memory as ptxas reports
#                them for sm_90 and sm_80 (bench/results/ptxas/), failing on a spill not known
#   make cuda-emu  the CBAM, SE two-phase and single-launch CUDA kernels run on the CPU (fibers for threads,
#                ASan/UBSan) against a double-precision reference (tools/cuda_emu/README.md)
#   make cuda-emu-glue  the CUDA ops' torch glue on CPU tensors over the emulated kernels, against
#                the CPU backend (tools/cuda_emu/glue)
#   make clang-check  every C++ source of the CPU build compiled by Clang for macOS on arm64 (Apple's
#                compiler family, libc++, NEON), which CI cannot run: the ziglang wheel's Clang
#                (tools/clang_check.py; CLANG_CHECK_ARGS="--target x86_64-linux-gnu" adds a target)
#   make gpu-prebuild  the CUDA build for a lent GPU (torch 2.11 of the floor venv, sm_90) into
#                .prebuilt/ with its stamp (tools/build_stamp.py): carry `.prebuilt` in the device
#                call and bench/gpu_check.sh's build step uses it instead of compiling there
#   make lint    ruff over every Python file and mypy over the package (pyproject.toml's settings)
#   make convert-sweep  fused_attn.convert and unconvert over every timm and torchvision model, built
#                on the meta device: no exception, the report's counts, state_dict keys, classes restored
#                (tools/convert_sweep.py; its summary: bench/results/convert_sweep.md)
#   make clean

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
export MAX_JOBS

# Pinned: a newer release's new checks would fail CI on code that did not change.
LINT_DEPS := ruff==0.17.6 mypy==2.4.1
# One environment for everything: torch (the registry's default build), the
# test and model dependencies (onnx, onnxscript and onnxruntime for the ONNX
# export test), and the build tools.
DEPS := torch torchvision timm numpy matplotlib pytest pytest-xdist hypothesis ninja setuptools wheel \
	onnx onnxscript onnxruntime $(LINT_DEPS)

# The support floor: torch 2.11 with the torchvision of its release. Its
# triton (3.6) interpreter needs numpy < 2.4 (2.4 refuses int() of a 1-element
# array, which the interpreter does for every loop bound); setuptools < 82 is
# torch 2.11's own pin.
FLOOR_VENV ?= .venv-floor
FLOOR_PY := $(abspath $(FLOOR_VENV))/bin/python
FLOOR_DEPS := torch==2.11.0 torchvision==0.26.0 "numpy<2.4" "setuptools<82" timm pytest pytest-xdist hypothesis ninja wheel matplotlib
FLOOR_SRC := build/floor
FLOOR_TESTS ?= tests

# $(call copy_tracked,DIR): DIR afresh, holding a copy of the tracked files
# (the other-torch targets build there, leaving the main tree's extension alone).
copy_tracked = rm -rf $(1) && mkdir -p $(1) && git ls-files -z | tar --null -T - -cf - | tar xf - -C $(1)

.PHONY: lint convert-sweep bench test test-floor test-newest triton-check ptxas-report clang-check cuda-emu cuda-emu-glue gpu-prebuild build cmake clean venv floor-venv newest-venv

$(VENV)/.deps: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(DEPS)
	touch $@

venv: $(VENV)/.deps

# The floor's environment alone (newest-venv, below: the newest torch's): CI installs all three
# at once (`make -j3 -Otarget venv floor-venv newest-venv`): each install is
# one process unpacking wheels, so on 2 cores the three take little more than
# the longest.
floor-venv: $(FLOOR_VENV)/.deps

build: venv
	$(PIP) install --no-build-isolation --no-deps -e .

# The extension as a file, for targets that need one built but not a rebuild
# (pip's editable build recompiles everything: ~4 minutes on 2 cores).
EXT := fused_attn/_C.abi3.so
EXT_SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)
$(EXT): $(VENV)/.deps $(EXT_SOURCES)
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

# The suite on TEST_JOBS xdist workers (one per core by default; TEST_JOBS=0
# runs it in this process, as a debugger wants).
TEST_JOBS ?= $(MAX_JOBS)
test: build
	$(PY) -m pytest -q -n $(TEST_JOBS) $(PYTEST_ARGS)

$(FLOOR_VENV)/.deps: Makefile
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_PY) -m pip install --upgrade pip
	$(FLOOR_PY) -m pip install $(FLOOR_DEPS)
	touch $@

# A copy of the tracked files, so that its in-place build (against torch 2.11)
# leaves the main tree's extension alone. CPU kernels only (the CUDA sources
# against 2.11: FORCE_CUDA=1 by hand), so CI's CUDA-build requirement is off.
test-floor: $(FLOOR_VENV)/.deps
	$(call copy_tracked,$(FLOOR_SRC))
	cd $(FLOOR_SRC) && FUSED_ATTN_NO_CUDA=1 $(FLOOR_PY) setup.py -q build_ext --inplace
	cd $(FLOOR_SRC) && FUSED_ATTN_REQUIRE_CUDA_BUILD=0 $(FLOOR_PY) -m pytest -q -p no:cacheprovider -n $(MAX_JOBS) $(FLOOR_TESTS)

# The newest torch release. `make test` installs what the machine's package
# registry offers, and a registry may be capped below the newest release (this
# VM's and CI's pip configuration pins torch<=2.14.1 to the wheels on their
# disks, while 2.15.0 is out), though a user's `pip install torch` gets it. So
# this venv comes from PyPI itself, the machine's pip configuration ignored,
# and upgrades whenever the Makefile changes (or delete it). The build
# compiles the CUDA sources' torch glue against the newest headers where nvcc
# is on the PATH (sm_90 only: the kernels themselves do not depend on torch).
NEWEST_VENV ?= .venv-newest
NEWEST_PY := $(abspath $(NEWEST_VENV))/bin/python
NEWEST_PIP := env PIP_CONFIG_FILE=/dev/null PIP_CONSTRAINT= PIP_FIND_LINKS= $(NEWEST_PY) -m pip
NEWEST_SRC := build/newest
NEWEST_TESTS ?= tests
NEWEST_BUILD_ENV = $(if $(shell command -v nvcc 2>/dev/null),FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0,FUSED_ATTN_NO_CUDA=1)

$(NEWEST_VENV)/.deps: Makefile
	$(PYTHON) -m venv $(NEWEST_VENV)
	$(NEWEST_PIP) install --upgrade pip
	$(NEWEST_PIP) install --upgrade $(DEPS)
	touch $@

newest-venv: $(NEWEST_VENV)/.deps

test-newest: $(NEWEST_VENV)/.deps
	@$(NEWEST_PY) -c "import torch; print('make test-newest: torch', torch.__version__)"
	$(call copy_tracked,$(NEWEST_SRC))
	cd $(NEWEST_SRC) && $(NEWEST_BUILD_ENV) $(NEWEST_PY) setup.py -q build_ext --inplace
	cd $(NEWEST_SRC) && $(NEWEST_PY) -m pytest -q -p no:cacheprovider -n $(MAX_JOBS) $(NEWEST_TESTS)

# The interpreter runs the Triton kernels but never compiles them: a kernel
# that the compiler rejects, or whose writes torch.compile's analysis misses,
# would otherwise first show on a GPU. The same variants are then compiled by
# Triton's AMD backend for an MI300 (gfx942), the backend's other target.
triton-check: $(FLOOR_VENV)/.deps
	mkdir -p build
	$(FLOOR_PY) tools/triton_compile_check.py --mutation --save build/triton_variants.json
	$(FLOOR_PY) tools/triton_compile_check.py --load build/triton_variants.json --target hip:gfx942

# ruff over every Python file (pyflakes, bugbear; pyproject.toml) and mypy over
# the package, its compiled module typed by fused_attn/_C.pyi (~20 s; needs no build).
lint: $(VENV)/.deps
	$(PY) -m ruff check .
	$(PY) -m mypy

# convert over every timm and torchvision model, on the meta device (~3
# minutes on 2 cores); SWEEP_ARGS="--filter 'se*'" narrows it.
convert-sweep: $(VENV)/.deps
	$(PY) tools/convert_sweep.py --check $(SWEEP_ARGS)

# What each CUDA kernel takes in registers, spills and shared memory, as ptxas
# reports it for sm_90 and sm_80 (needs nvcc only; ~4 minutes on 2 cores):
# fails if the kernels that spill are not exactly the known ones.
ptxas-report:
	python3 tools/ptxas_report.py --md bench/results/ptxas/ptxas_report.md --check

# CI builds with GCC on x86-64 only; a GCC-only builtin in the CPU kernels
# broke every Clang build (macOS) unseen until 2026-12-07. Compiles only (~1
# minute on 2 cores); the ziglang wheel (~100 MB) carries Clang and each
# target's C and C++ headers. Pinned: with -Werror, a newer Clang's new
# warnings must come in by a commit, not turn a clean clone's CI red.
clang-check: $(VENV)/.deps
	$(PIP) install -q ziglang==0.17.1
	$(PY) tools/clang_check.py $(CLANG_CHECK_ARGS)

# The CUDA kernels' logic checked without a GPU: an emulation that runs them
# on the CPU (needs g++ only; builds under build/cuda_emu).
cuda-emu:
	bash tools/cuda_emu/run.sh

# The CUDA backend's torch glue (csrc/cuda/*.cpp) compiled against the emulated
# kernels and run on CPU tensors against the CPU backend (tools/cuda_emu/glue).
cuda-emu-glue: $(EXT)
	$(PY) -m pytest -q -p no:cacheprovider tools/cuda_emu/glue/test_glue.py

# Device time is short (a quarter hour a session, its start included) and the
# CUDA build takes minutes of it: build here, against the GPU machine's torch
# (the floor's 2.11), from a copy of the working tree. build/gpu is kept, so a
# rebuild after a small change recompiles only what changed.
GPU_ARCHS ?= 9.0
GPU_SRC := build/gpu
PREBUILT := .prebuilt
# The files copied are the ones a device call sends: tracked, and untracked
# but not ignored. STAMP goes last, so a failed step leaves no stamp to match.
gpu-prebuild: $(FLOOR_VENV)/.deps
	rm -rf $(GPU_SRC)/csrc $(PREBUILT)/STAMP && mkdir -p $(GPU_SRC) $(PREBUILT)
	git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf $(GPU_SRC).tar
	tar xf $(GPU_SRC).tar -C $(GPU_SRC) && rm $(GPU_SRC).tar
	cd $(GPU_SRC) && FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$(GPU_ARCHS)" $(FLOOR_PY) setup.py -q build_ext --inplace
	cp $(GPU_SRC)/fused_attn/_C.abi3.so $(PREBUILT)/_C.abi3.so
	strip --strip-debug $(PREBUILT)/_C.abi3.so  # host debug info: 50 MB of a carry's 64 (the kernels' -lineinfo stays)
	cd $(GPU_SRC) && $(FLOOR_PY) tools/build_stamp.py "$(GPU_ARCHS)" > $(abspath $(PREBUILT))/STAMP.tmp
	mv $(PREBUILT)/STAMP.tmp $(PREBUILT)/STAMP
	@cat $(PREBUILT)/STAMP; ls -l $(PREBUILT)

cmake: venv
	$(PY) tools/cmake_build.py

clean:
	rm -rf build *.egg-info fused_attn/*.so $(PREBUILT) $(VENV) $(FLOOR_VENV) $(NEWEST_VENV)
