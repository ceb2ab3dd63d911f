#!/usr/bin/env bash
# Everything a lent GPU is for, in one command: build the extension, run the
# test suite (the GPU matrix included), compute-sanitizer over small SE, ECA
# and CBAM forwards/backwards, and the op benchmark (python -m bench.ops
# --device cuda: every fused backend vs eager vs torch.compile vs a copy;
# bench-full runs the whole grid with every compile mode, which takes hours).
# Logs go to $GPU_LOG_DIR (default bench/results/<gpu-name>/); commit them.
#
#   bench/gpu_check.sh                      # build test sanitize bench
#   bench/gpu_check.sh build gpu-test       # some of: build test gpu-test gpu-test-quick sanitize
#                                           #   sanitize-quick bench bench-fast overhead ab-paths ab-cbam models
#                                           #   bench-full
#
# A short lease (one command of at most 10 minutes, a quarter hour in all):
# first `make gpu-prebuild` here, then, with carry [".prebuilt"],
#
#   GPU_LOG_DIR=/tmp/gpu GPU_LOG_TAR=$OUT/gpu_logs.tgz GPU_DEADLINE=570 \
#     bench/gpu_check.sh build gpu-test-quick:170 sanitize-quick:60 ab-paths:40 ab-cbam:40 overhead:40 \
#       bench-fast:150 gpu-test
#
# (the build step uses .prebuilt when its stamp matches, and compiles
# otherwise; gpu-test-quick runs one in FUSED_ATTN_SUBSET=6 of each big test
# matrix's cases and every other GPU test; bench-fast leaves out torch.compile,
# whose compile per row would take the quick grid past any one step's limit:
# `bench` in a later call; the whole gpu-test last, for whatever time is left).
#
# gpu-test runs only the GPU tests (pytest -m gpu, on pytest-xdist workers when
# it is installed, the tests that hold many GiB of GPU memory in one of them);
# sanitize-quick only memcheck on the CUDA backend. A step is cut off after
# the seconds written after it (`step:170`), or GPU_STEP_TIMEOUT (default:
# none), and never runs past GPU_DEADLINE seconds from the start (a step with
# less than 20 s left is skipped); in a pytest step, tests not started by
# GPU_TEST_MARGIN (45) seconds before its end are skipped (FUSED_ATTN_STOP_AT),
# so its log still ends with the summary of what ran. After each step the whole log
# directory is re-packed into GPU_LOG_TAR (one file: a lease returns few), so
# a command stopped at its limit still returns the logs of the steps it
# finished.
#
# Runs on the GPU machine as is (no network): TORCH_CUDA_ARCH_LIST defaults
# to the visible GPU's architecture.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(build test sanitize bench)

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
slug=$(echo "$gpu" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//;s/-$//')
LOG=${GPU_LOG_DIR:-bench/results/$slug}
mkdir -p "$LOG"
summary="$LOG/summary.txt"
status=0
note() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$summary"; }
pack() {  # the log directory as one archive, when GPU_LOG_TAR is set
  [ -n "${GPU_LOG_TAR:-}" ] && tar czf "$GPU_LOG_TAR.tmp" -C "$(dirname "$LOG")" "$(basename "$LOG")" \
    && mv "$GPU_LOG_TAR.tmp" "$GPU_LOG_TAR"
  return 0
}
t_start=$(date +%s)
step_limit=${GPU_STEP_TIMEOUT:-}   # the current step's (set per step below)
stop_at() {  # for pytest's FUSED_ATTN_STOP_AT (tests/conftest.py): the step's end, less a margin
  [ -n "$step_limit" ] && echo $(( $(date +%s) + step_limit - ${GPU_TEST_MARGIN:-45} ))
  return 0
}
run_step() {  # name, log file, command...
  local name=$1 file=$2; shift 2
  local t0=$(date +%s)
  if [ -n "$step_limit" ]; then
    timeout --kill-after=15 "$step_limit" "$@" > "$LOG/$file" 2>&1
  else
    "$@" > "$LOG/$file" 2>&1
  fi
  local rc=$?
  [ $rc -eq 124 ] && echo "gpu_check: cut off after ${step_limit} s" >> "$LOG/$file"
  note "$name: exit $rc in $(( $(date +%s) - t0 )) s ($file: $(tail -1 "$LOG/$file" | cut -c1-160))"
  local late
  late=$(grep -o 'SKIPPED \[[0-9]*\] .*past FUSED_ATTN_STOP_AT' "$LOG/$file" | grep -o '[0-9][0-9]*' | head -1)
  [ -n "$late" ] && note "$name: $late tests not started (the step's time ran out; counted as skipped above)"
  [ $rc -ne 0 ] && status=1
  pack
  return $rc
}

# `make gpu-prebuild` (on the development machine) leaves a CUDA build and its
# stamp in .prebuilt/; carried along, it saves the build's minutes of device
# time. Used only when the stamp computed here matches (same sources, torch,
# CUDA and architectures) and the library loads with its CUDA kernels.
use_prebuilt() {
  [ -f .prebuilt/_C.abi3.so ] && [ -f .prebuilt/STAMP ] || return 1
  local want have
  want=$($PY tools/build_stamp.py "$TORCH_CUDA_ARCH_LIST" 2>> "$LOG/build.log"); have=$(cat .prebuilt/STAMP)
  if [ "$want" != "$have" ]; then
    note "build: not using .prebuilt (built from: $have; here: $want)"
    return 1
  fi
  cp .prebuilt/_C.abi3.so fused_attn/_C.abi3.so || return 1
  # Loads, was built for this GPU, and runs: a small SE forward on the CUDA backend.
  if $PY - > "$LOG/build.log" 2>&1 <<'PYEOF'; then
import sys, torch, fused_attn
from fused_attn import _extension
b = fused_attn.backends()
[print(s) for n, s in b.items() if n != "cuda"]
print(b["cuda"])
if not b["cuda"].devices:
    sys.exit(1)
cap = "%d%d0" % torch.cuda.get_device_capability(0)
if cap not in _extension.CUDA_ARCHS.split(","):
    print(f"no CUDA kernels for this GPU (sm {cap}; built for: {_extension.CUDA_ARCHS})")
    sys.exit(1)
x = torch.randn(2, 8, 4, 4, device="cuda")
with fused_attn.use_backend("cuda"):
    y = fused_attn.squeeze_excitation(x, torch.randn(2, 8, device="cuda"), None, torch.randn(8, 2, device="cuda"))
torch.cuda.synchronize()
print("a CUDA SE forward ran:", tuple(y.shape))
PYEOF
    note "build: using .prebuilt ($have)"
    pack
    return 0
  fi
  note "build: .prebuilt does not load or run here ($(tail -1 "$LOG/build.log" | cut -c1-160)); building"
  rm -f fused_attn/_C.abi3.so
  return 1
}

note "gpu_check on $gpu: steps ${steps[*]}; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi > "$LOG/nvidia-smi.txt" 2>&1
$PY - > "$LOG/versions.txt" 2>&1 <<'PYEOF'
import platform, torch
print("python", platform.python_version()); print("torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except ImportError as e:
    print("triton: not importable:", e)
print("gpu", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
PYEOF

for spec in "${steps[@]}"; do
  step=${spec%%:*}
  step_limit=${GPU_STEP_TIMEOUT:-}
  [ "$spec" != "$step" ] && step_limit=${spec#*:}
  if [ -n "${GPU_DEADLINE:-}" ]; then
    left=$(( GPU_DEADLINE - ($(date +%s) - t_start) ))
    if [ $left -lt 20 ]; then
      note "$step: skipped, ${left} s left before GPU_DEADLINE"
      continue
    fi
    { [ -z "$step_limit" ] || [ "$step_limit" -gt "$left" ]; } && step_limit=$left
  fi
  case $step in
    build)
      cap=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
      export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$cap} MAX_JOBS=${MAX_JOBS:-16}
      use_prebuilt && continue
      before=$status
      if ! run_step build build.log $PY -m pip install --no-build-isolation --no-deps -v -e .; then
        # An editable install needs pip and setuptools new enough for PEP 660;
        # the in-place build needs neither, and the tests and benchmarks run
        # from the repository root, where it puts fused_attn/_C.
        # Not after a compile error, nor after the step's time ran out: that
        # would only fail again, or take the next steps' time too.
        grep -q -e "Error compiling objects" -e "gpu_check: cut off" "$LOG/build.log" ||
          { run_step "build (in place)" build_inplace.log $PY setup.py build_ext --inplace && status=$before; }
      fi
      $PY -c "import fused_attn; [print(s) for s in fused_attn.backends().values()]" >> "$LOG/build.log" 2>&1
      ;;
    test)
      FUSED_ATTN_STOP_AT=$(stop_at) FUSED_ATTN_REQUIRE_EXTENSION=1 run_step test tests.log $PY -m pytest -q -rfEs --maxfail=100 -p no:cacheprovider tests
      ;;
    gpu-test|gpu-test-quick)
      xdist=()
      $PY -c "import xdist" 2>/dev/null && xdist=(-n "${GPU_TEST_WORKERS:-8}" --dist loadgroup)
      subset=1 file=tests_gpu.log
      [ $step = gpu-test-quick ] && subset=${GPU_TEST_SUBSET:-6} file=tests_gpu_quick.log
      FUSED_ATTN_STOP_AT=$(stop_at) FUSED_ATTN_SUBSET=$subset FUSED_ATTN_REQUIRE_EXTENSION=1 run_step $step $file $PY -m pytest -q -rfEs -m gpu \
        "${xdist[@]}" --durations=25 --maxfail=100 -p no:cacheprovider tests
      ;;
    sanitize-quick)
      run_step "sanitize memcheck (cuda)" sanitize_memcheck_cuda.log \
        compute-sanitizer --tool memcheck --error-exitcode 1 $PY tools/sanitize_se.py cuda
      ;;
    sanitize)
      for tool in memcheck racecheck synccheck; do
        run_step "sanitize $tool (cuda)" "sanitize_${tool}_cuda.log" \
          compute-sanitizer --tool $tool --error-exitcode 1 $PY tools/sanitize_se.py cuda
      done
      run_step "sanitize memcheck (triton)" sanitize_memcheck_triton.log \
        compute-sanitizer --tool memcheck --error-exitcode 1 $PY tools/sanitize_se.py triton
      ;;
    bench)
      run_step bench bench_ops_quick.log $PY -m bench.ops --device cuda --quick --out "$LOG"
      ;;
    bench-fast)  # the quick grid without torch.compile (a compile per row is most of bench's time)
      run_step bench-fast bench_ops_quick_nocompile.log $PY -m bench.ops --device cuda --quick --compile none \
        --out "$LOG"
      ;;
    ab-paths)  # SE's CUDA forward paths (single launch, two-phase cooperative / per-phase launches) vs a copy
      run_step ab-paths ab_cuda_paths.log $PY -m bench.ab_cuda_paths --out "$LOG"
      ;;
    ab-cbam)  # the order CBAM's CUDA passes walk the batch (alternating vs all forward) vs a copy
      run_step ab-cbam ab_cbam_order.log $PY -m bench.ab_cbam_order --out "$LOG"
      ;;
    overhead)  # host time per call, layer by layer (seconds)
      run_step overhead bench_overhead.log $PY -m bench.overhead --device cuda --out "$LOG"
      ;;
    models)
      run_step models bench_models_quick.log $PY -m bench.models --device cuda --quick --out "$LOG"
      ;;
    bench-full)
      run_step bench-full bench_ops_full.log $PY -m bench.ops --device cuda --full --out "$LOG"
      ;;
    *) note "unknown step $step"; status=1 ;;
  esac
done
note "gpu_check: exit $status"
pack
exit $status
