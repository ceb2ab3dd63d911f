"""Compile the extension's C++ sources with Clang for targets CI cannot run.

The CPU kernels are written with GCC's vector extensions, and CI builds them
with GCC on x86-64 only. Apple's Clang (macOS, arm64, libc++) is where most
other users build them, and a GCC-only builtin there is a broken install (one
was: __builtin_shuffle, which Clang lacks). This compiles every C++ source of
the CPU build (csrc/*.cpp, csrc/cpu/*.cpp) with the Clang that the `ziglang`
wheel carries, for each target given, against the torch and Python headers of
the running interpreter, with -Wall -Wextra -Werror on our code (torch's
headers are system headers here). Compiling only: nothing is linked or run
(objects go to a temporary directory).

    python tools/clang_check.py [--target aarch64-macos] [--jobs 2]

Not checked here: OpenMP (Clang has no omp.h of its own; setup.py probes for
it on the machine that builds, and builds without it where it finds none).
"""
import argparse
import concurrent.futures
import glob
import os
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TARGETS = ["aarch64-macos"]


def clang_cmd():
    try:
        import ziglang  # noqa: F401
    except ImportError:
        sys.exit("tools/clang_check.py needs the ziglang wheel (Clang and libc/libc++ headers for every target): "
                 "pip install ziglang")
    return [sys.executable, "-m", "ziglang", "c++"]


def flags():
    from torch.utils.cpp_extension import include_paths

    out = ["-std=c++20", "-O1", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden",
           "-DPy_LIMITED_API=0x030A0000", "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
           "-I" + os.path.join(ROOT, "csrc")]
    for p in include_paths() + [sysconfig.get_paths()["include"]]:
        out += ["-isystem", p]
    return out


def compile_one(cc, common, target, src, tmp):
    obj = os.path.join(tmp, f"{target}-{os.path.basename(src)}.o")
    cmd = cc + ["-target", target] + common + ["-c", src, "-o", obj]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    # zig's driver notes arguments it passes on unused; not ours to fix.
    text = "\n".join(ln for ln in (r.stdout + r.stderr).splitlines() if "argument unused during compilation" not in ln)
    return target, os.path.relpath(src, ROOT), r.returncode, time.time() - t, text.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", help=f"a Clang target triple (default: {DEFAULT_TARGETS})")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    targets = args.target or DEFAULT_TARGETS
    cc = clang_cmd()
    version = subprocess.run(cc + ["--version"], capture_output=True, text=True).stdout.splitlines()[0]
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    common = flags()
    import torch

    print(f"clang_check: {version}; torch {torch.__version__} headers; {len(sources)} sources x {targets}")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        jobs = [pool.submit(compile_one, cc, common, t, s, tmp) for t in targets for s in sources]
        for job in jobs:
            target, src, rc, secs, text = job.result()
            print(f"  {'ok  ' if rc == 0 else 'FAIL'} {target:<18} {src} ({secs:.0f} s)")
            if rc != 0:
                failed += 1
                print("\n".join("      " + ln for ln in text.splitlines()[:40]))
    if failed:
        sys.exit(f"clang_check: {failed} compile(s) failed")
    print("clang_check: every source compiles")


if __name__ == "__main__":
    main()
