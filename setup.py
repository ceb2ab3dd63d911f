"""Builds fused_attn._C: the C++ CPU kernels, plus the CUDA sources when a CUDA
toolkit and a CUDA build of torch are both present.

Environment:
  FORCE_CUDA=1          build the CUDA sources even if torch sees no toolkit/GPU
  FUSED_ATTN_NO_CUDA=1  CPU-only build even where CUDA is available
  TORCH_CUDA_ARCH_LIST  GPU architectures, e.g. "9.0" (torch's default otherwise)
  DEBUG=1               -O0 -g
  MAX_JOBS              parallel compile jobs (ninja)
  FUSED_ATTN_OPENMP=0   build the CPU kernels without OpenMP (one thread)
  CXX                   the C++ compiler (GCC or Clang; torch's default: c++)
"""
import glob
import os
import sys

from setuptools import find_packages, setup


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tools.build_env import default_arch_list, find_cuda_home, openmp_flags  # noqa: E402

# Before torch.utils.cpp_extension reads it.
if find_cuda_home() and not os.environ.get("CUDA_HOME"):
    os.environ["CUDA_HOME"] = find_cuda_home()

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def extension():
    debug = _flag("DEBUG")
    # A ROCm torch would hipify the CUDA sources, which use CUDA-only features
    # (thread-block clusters): there the Triton backend serves the GPU.
    rocm = getattr(torch.version, "hip", None) is not None
    want_cuda = not _flag("FUSED_ATTN_NO_CUDA") and not rocm and (
        _flag("FORCE_CUDA") or (torch.version.cuda is not None and CUDA_HOME is not None)
    )
    if os.name == "nt":
        raise SystemExit("fused_attn: the CPU kernels are written with GCC/Clang vector extensions, which MSVC "
                         "does not compile: Windows is not supported (Linux or macOS, with GCC or Clang)")
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # The C++ standard is the one torch asks for. OpenMP: at::parallel_for is
    # an inline template that runs serially unless the extension itself is
    # compiled with OpenMP (torch's runtime, libgomp or libomp, is already
    # loaded when _C is).
    omp_cflags, omp_lflags, no_omp = openmp_flags(os.path.dirname(os.path.abspath(torch.__file__)))
    if no_omp:
        print(f"fused_attn: WARNING: building the CPU kernels without OpenMP, so they run on one thread: {no_omp}")
    # -Wno-psabi: GCC notes that 32-byte vectors passed by value changed ABI
    # in GCC 4.6 wherever the baseline (pre-AVX) kernels take one; they are
    # all inline helpers inside this library, so no ABI is crossed.
    cxx += ["-fvisibility=hidden", "-Wno-psabi"] + omp_cflags
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    macros = [("Py_LIMITED_API", "0x030A0000")]
    kwargs = dict(py_limited_api=True, define_macros=macros, extra_link_args=omp_lflags)
    if want_cuda:
        sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
        macros.append(("FUSED_ATTN_WITH_CUDA", None))
        nvcc = ["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"]
        default_archs = default_arch_list(torch)
        if default_archs:
            os.environ["TORCH_CUDA_ARCH_LIST"] = default_archs
        print(f"fused_attn: building CPU + CUDA (torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"toolkit {CUDA_HOME}, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '<torch default>')})")
        return CUDAExtension("fused_attn._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    why = ("FUSED_ATTN_NO_CUDA is set" if _flag("FUSED_ATTN_NO_CUDA")
           else f"torch is a ROCm build (HIP {torch.version.hip}): AMD GPUs take the Triton backend" if rocm
           else "torch is a CPU build" if torch.version.cuda is None else "no CUDA toolkit found (CUDA_HOME)")
    print(f"fused_attn: building CPU only ({why}; torch {torch.__version__})")
    return CppExtension("fused_attn._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    packages=find_packages(include=["fused_attn", "fused_attn.*"]),
    # PEP 561: the package's annotations, and the compiled module's stub, for
    # users' type checkers.
    package_data={"fused_attn": ["py.typed", "_C.pyi"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
