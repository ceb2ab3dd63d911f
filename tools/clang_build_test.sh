#!/usr/bin/env bash
# The CPU extension built by Clang and tested: what a user whose compiler is
# Clang gets (macOS's is; CI builds with GCC). Clang is the ziglang wheel's,
# compiling against this machine's glibc and libstdc++ headers (torch's
# libraries are built against libstdc++; zig's own libc++ would not link with
# them), and g++ links the objects. Clang has no OpenMP runtime here, so this
# also checks the build without OpenMP (setup.py's fallback: one thread).
#
#   bash tools/clang_build_test.sh [pytest arguments]    (default: the CPU op suites)
#
# Builds in build/clang (a copy of the working tree's tracked and untracked
# files), leaving the main tree's extension alone. ~1 minute to build on
# 2 cores, ~2.5 minutes for the default tests. Not in CI (time); by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PY:-$ROOT/.venv/bin/python}
OUT=build/clang

"$PY" -m pip install -q ziglang==0.17.1
ZIG_INCLUDE=$("$PY" -c "import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), 'lib', 'include'))")

rm -rf "$OUT" && mkdir -p "$OUT"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar xf - -C "$OUT"

# g++'s header search list, GCC's own compiler headers (stddef.h, the
# intrinsics: `g++ -print-file-name=include`, and include-fixed) swapped for
# Clang's; compared as real paths, as distributions spell them differently.
gcc_own=$(realpath -m "$(g++ -print-file-name=include)")
gcc_fixed=$(realpath -m "$(g++ -print-file-name=include-fixed)")
includes=()
while read -r dir; do
  case "$(realpath -m "$dir")" in
    "$gcc_own") includes+=(-isystem "$ZIG_INCLUDE") ;;
    "$gcc_fixed") ;;
    *) includes+=(-isystem "$dir") ;;
  esac
done < <(echo | g++ -E -x c++ - -v 2>&1 | sed -n '/<...> search starts here:/,/End of search list/p' | sed '1d;$d')
# zig's Clang checks glibc's version against its own headers: this machine's.
glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
target="$(uname -m)-linux-gnu.$glibc"

cat > "$OUT/cxx.sh" <<EOF
#!/usr/bin/env bash
# A compile (any C++ source among the arguments) goes to Clang; a link of
# objects to g++.
for a in "\$@"; do
  case "\$a" in
    *.cpp|*.cc|*.cxx) exec $(printf '%q ' "$PY") -m ziglang c++ -target $target -nostdinc -nostdinc++ $(printf '%q ' "${includes[@]}") "\$@" ;;
  esac
done
exec g++ "\$@"
EOF
chmod +x "$OUT/cxx.sh"

cd "$OUT"
echo "clang_build_test: $("$PY" -m ziglang c++ --version | head -1), target $target"
if ! CXX="$ROOT/$OUT/cxx.sh" LDSHARED="g++ -shared" FUSED_ATTN_NO_CUDA=1 "$PY" setup.py -q build_ext --inplace \
    > build.log 2>&1; then
  { grep -E -A3 "error" build.log || tail -20 build.log; } | head -40 || true
  echo "clang_build_test: the build failed ($OUT/build.log)"
  exit 1
fi
grep "^fused_attn:" build.log
# The extension tested must be this one: an editable install of the main tree
# can otherwise supply fused_attn._C.
"$PY" - <<'PYEOF'
import os, fused_attn
from fused_attn import _extension
so = os.path.realpath(_extension._C.__file__)
assert so.startswith(os.path.realpath("fused_attn") + os.sep), f"fused_attn._C loaded from {so}, not this build"
print("clang_build_test:", so, "|", fused_attn.backends()["cpu"])
PYEOF
if [ $# -eq 0 ]; then
  set -- tests/test_se.py tests/test_se_ops.py tests/test_eca.py tests/test_cbam.py tests/test_cbam_reference.py \
    tests/test_robustness.py tests/test_se_modules.py tests/test_backends.py tests/test_convert.py -k "not triton"
fi
"$PY" -m pytest -q -p no:cacheprovider -n "${MAX_JOBS:-$(nproc)}" "$@"
