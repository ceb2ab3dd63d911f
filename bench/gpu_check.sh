#!/usr/bin/env bash
# Everything a lent GPU is for, in one command: build the extension, run the
# test suite (the GPU matrix included), compute-sanitizer over a small SE
# forward/backward, and the op benchmark (python -m bench.ops --device cuda:
# every fused backend vs eager vs torch.compile vs a copy; bench-full runs the
# whole grid with every compile mode, which takes hours). Logs go to $GPU_LOG_DIR (default
# bench/results/<gpu-name>/); commit them.
#
#   bench/gpu_check.sh                      # all steps
#   bench/gpu_check.sh build test           # some: build test sanitize bench models bench-full
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
run_step() {  # name, log file, command...
  local name=$1 file=$2; shift 2
  local t0=$(date +%s)
  "$@" > "$LOG/$file" 2>&1
  local rc=$?
  note "$name: exit $rc in $(( $(date +%s) - t0 )) s ($file: $(tail -1 "$LOG/$file" | cut -c1-160))"
  [ $rc -ne 0 ] && status=1
  return $rc
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

for step in "${steps[@]}"; do
  case $step in
    build)
      cap=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
      TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$cap} MAX_JOBS=${MAX_JOBS:-16} \
        run_step build build.log $PY -m pip install --no-build-isolation --no-deps -v -e .
      $PY -c "import fused_attn; [print(s) for s in fused_attn.backends().values()]" >> "$LOG/build.log" 2>&1
      ;;
    test)
      FUSED_ATTN_REQUIRE_EXTENSION=1 run_step test tests.log $PY -m pytest -q -rfEs --maxfail=100 -p no:cacheprovider tests
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
exit $status
