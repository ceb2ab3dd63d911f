#!/usr/bin/env bash
# The CUDA kernels' CPU emulation (README.md): rewrite the sources, build the
# binary, run the suite with the grid cap as written and at 2 (--cap2). Exit
# status 0 only if everything passed.
#
#   tools/cuda_emu/run.sh           quick suite (CI), and the quick suite again with --cap2
#   tools/cuda_emu/run.sh --full    every case, and --cap2's quick suite
#   extra arguments (--cbam, --se, --fused, -v) go to both runs
set -euo pipefail
cd "$(dirname "$0")"
BUILD=${EMU_BUILD:-../../build/cuda_emu}
mode=--quick
args=()
for a in "$@"; do
  if [ "$a" = --full ]; then mode=; else args+=("$a"); fi
done
python3 prepare.py "$BUILD"
EMU_BUILD="$BUILD" python3 mutate.py --check  # the mutants still fit the kernels
make -s -j"${MAX_JOBS:-2}" BUILD="$BUILD"
export ASAN_OPTIONS=detect_stack_use_after_return=0:detect_leaks=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
quiet() { grep -v "ASan doesn't fully support makecontext" || true; }
# The two runs are single-threaded: side by side.
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
"$BUILD/emu_test" $mode "${args[@]}" > "$log/a" 2>&1 &
a=$!
"$BUILD/emu_test" --quick --cap2 "${args[@]}" > "$log/b" 2>&1 &
b=$!
rc=0; wait $a || rc=$?
rc2=0; wait $b || rc2=$?
echo "== cuda-emu: the kernels as written ${mode:-(full)}"
quiet < "$log/a"
echo "== cuda-emu: grid cap 2 (the grid-stride loops over samples), quick"
quiet < "$log/b"
echo "cuda-emu: $([ "$rc" -eq 0 ] && [ "$rc2" -eq 0 ] && echo passed || echo FAILED)"
[ "$rc" -eq 0 ] && [ "$rc2" -eq 0 ]
