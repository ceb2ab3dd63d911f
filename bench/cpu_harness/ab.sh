#!/usr/bin/env bash
# A/B of the CPU kernels of two commits below Python and the dispatcher:
# rows_dot.cpp (the MLP products), passes.cpp (the SE/ECA big-tensor
# passes) and cbam_passes.cpp (CBAM's), compiled against each commit's csrc/
# (AVX2 build, the torch of .venv), checked bitwise (rows_dot, cbam_passes),
# then run in alternation, ROUNDS times each (this VM's speed drifts from
# minute to minute: compare like rounds).
#
#   bench/cpu_harness/ab.sh A_REF B_REF [ROUNDS] > bench/results/<cpu>/cpu_harness_ab.txt
set -euo pipefail
cd "$(dirname "$0")/../.."
A=$1 B=$2 ROUNDS=${3:-3}
PY=${PYTHON:-.venv/bin/python}
TORCH=$($PY -c "import os, torch; print(os.path.dirname(torch.__file__))")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for ref in A B; do
  mkdir -p "$work/$ref"
  git archive "${!ref}" csrc | tar xf - -C "$work/$ref"
  for h in rows_dot passes cbam_passes; do
    g++ -O3 -std=c++20 -fopenmp -DNDEBUG -I"$work/$ref" -I"$TORCH/include" -I"$TORCH/include/torch/csrc/api/include" \
      "bench/cpu_harness/$h.cpp" -o "$work/$ref/$h" -L"$TORCH/lib" -lc10 -ltorch_cpu -Wl,-rpath,"$TORCH/lib"
  done
done
echo "# A = $A ($(git rev-parse --short "$A")), B = $B ($(git rev-parse --short "$B"))"
echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; torch $($PY -c 'import torch; print(torch.__version__)'); g++ $(g++ -dumpversion); $(date -u +%FT%TZ)"
DUMP="$work/A.dump" "$work/A/rows_dot" > /dev/null
DUMP="$work/B.dump" "$work/B/rows_dot" > /dev/null
if cmp -s "$work/A.dump" "$work/B.dump"; then echo "# rows_dot: A and B outputs bitwise equal"; else echo "# rows_dot: A and B outputs DIFFER"; fi
for r in $(seq "$ROUNDS"); do
  for ref in A B; do "$work/$ref/rows_dot" | sed "s/^/$ref round $r: /"; done
done
same=1
for args in "2048 49 nchw" "2048 49 cl" "517 13 nchw" "517 13 cl"; do
  REPS=1 DUMP="$work/A.cdump" "$work/A/cbam_passes" $args > /dev/null  # outputs only: one call per pass
  REPS=1 DUMP="$work/B.cdump" "$work/B/cbam_passes" $args > /dev/null
  cmp -s "$work/A.cdump" "$work/B.cdump" || same=0
done
if [ $same = 1 ]; then echo "# cbam_passes: A and B outputs bitwise equal"; else echo "# cbam_passes: A and B outputs DIFFER"; fi
for args in "2048 49 nchw" "2048 49 cl" "1024 196 nchw cold" "512 784 cl cold" "256 3136 cl cold"; do
  for r in $(seq "$ROUNDS"); do
    for ref in A B; do REPS=150 "$work/$ref/cbam_passes" $args | sed "s/^/$ref round $r: /"; done
  done
done
# (the last two in bf16: its conversions are vector code of their own)
for args in "2048 49 nchw warm 1" "2048 49 cl warm 1" "2048 49 nchw cold 2" "2048 49 cl cold 2" \
            "2048 49 nchw warm 1 bf16" "256 3136 cl warm 2 bf16"; do
  for r in $(seq "$ROUNDS"); do
    for ref in A B; do "$work/$ref/passes" $args | sed "s/^/$ref round $r: /"; done
  done
done
