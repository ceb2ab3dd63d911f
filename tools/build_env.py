"""Where the CUDA toolkit is and which GPU architectures to build for: shared
by setup.py and tools/cmake_build.py so both builds agree. And how the
compiler takes OpenMP (setup.py)."""
import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile


def find_cuda_home():
    """The CUDA toolkit root, or None.

    torch takes the root to be the parent of the `nvcc` on PATH; when that nvcc
    is a wrapper script (as /usr/local/bin/nvcc is on our CI machine) the guess
    has no headers or libraries. Accept a root only if it has the runtime
    header; CUDA_HOME / CUDA_PATH win when set."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if os.path.isfile(os.path.join(root, "include", "cuda_runtime_api.h")):
            return root
    return None


def default_arch_list(torch):
    """With no GPU visible and TORCH_CUDA_ARCH_LIST unset, torch cannot pick
    architectures (CI builds on a machine without a GPU): build for the ones
    this torch itself ships kernels for, with PTX for the newest."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or torch.cuda.device_count() > 0:
        return None
    archs = [a[len("sm_"):] for a in torch.cuda.get_arch_list() if a.startswith("sm_")]
    archs = [f"{a[:-1]}.{a[-1]}" for a in archs if a.isdigit()]
    return ";".join(archs) + "+PTX" if archs else None


def pip_cuda_library(name):
    """A CUDA library shipped in the nvidia-* wheels torch depends on (e.g.
    nvrtc, which a minimal toolkit lacks but torch's CMake config asks for)."""
    import torch

    site = os.path.dirname(os.path.dirname(torch.__file__))
    hits = sorted(glob.glob(os.path.join(site, "nvidia", "**", f"lib{name}.so*"), recursive=True))
    hits = [h for h in hits if "builtins" not in h]
    return hits[0] if hits else None


_OPENMP_PROBE = r"""
#include <omp.h>
int fused_attn_openmp_probe(int n) {
  int s = 0;
#pragma omp parallel for reduction(+ : s)
  for (int i = 0; i < n; ++i) s += i * omp_get_num_threads();
  return s;
}
"""


def compiler_is_gcc(cxx):
    """Whether the compiler command cxx (a path or name) is GCC, by its
    --version (Apple's g++ is Clang)."""
    if not cxx or shutil.which(cxx) is None:
        return False
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.lower()
    return "clang" not in out and "free software foundation" in out


def openmp_off():
    """FUSED_ATTN_OPENMP=0 (or false, no, off): build without OpenMP."""
    return os.environ.get("FUSED_ATTN_OPENMP", "1").strip().lower() in ("0", "false", "no", "off")


def openmp_flags(torch_dir):
    """(compile flags, link flags, why not) for OpenMP with the compiler torch
    will build with ($CXX, else c++), found by compiling and then linking a
    small OpenMP library with it, as the build does. The first that works of:

    * on macOS, where torch's wheel ships libomp.dylib (the runtime torch
      itself loads): always that library to link, compiled with Apple
      Clang's -Xpreprocessor -fopenmp and torch's omp.h, else with -fopenmp
      (a Clang with its own omp.h, Homebrew's). Linking the compiler's own
      runtime too would load a second copy, and the process aborts when both
      initialize ("OMP: Error #15").
    * -fopenmp for both (GCC; Clang with an OpenMP runtime: on Linux that is
      LLVM's libomp beside torch's libgomp, two thread pools; the README says
      so).

    Neither: no flags, and at::parallel_for runs the CPU kernels on one
    thread. torch_dir: the torch package's directory."""
    if openmp_off():
        return [], [], "FUSED_ATTN_OPENMP=0"
    cxx = shlex.split(os.environ.get("CXX", "c++"))
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    inc, lib = os.path.join(torch_dir, "include"), os.path.join(torch_dir, "lib")
    if sys.platform == "darwin" and os.path.exists(os.path.join(lib, "libomp.dylib")):
        torch_omp = [f"-L{lib}", "-lomp", f"-Wl,-rpath,{lib}"]
        candidates = [(["-Xpreprocessor", "-fopenmp", f"-I{inc}"], torch_omp), (["-fopenmp"], torch_omp)]
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        src, obj = os.path.join(tmp, "probe.cpp"), os.path.join(tmp, "probe.o")
        with open(src, "w") as f:
            f.write(_OPENMP_PROBE)
        for cflags, lflags in candidates:
            steps = (cxx + cflags + ["-fPIC", "-c", src, "-o", obj],
                     cxx + ["-shared", obj, "-o", os.path.join(tmp, "probe.so")] + lflags)
            why = ""
            for cmd in steps:
                try:
                    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    why = str(exc)
                    break
                if r.returncode != 0:
                    lines = (r.stderr + r.stdout).strip().splitlines()
                    why = next((ln for ln in lines if "error" in ln), lines[-1] if lines else f"exit {r.returncode}")
                    break
            if not why:
                return cflags, lflags, ""
            errors.append(f"{' '.join(cflags)}: {why.strip()}")
    return [], [], f"{' '.join(cxx)} cannot build OpenMP ({'; '.join(errors)})"
