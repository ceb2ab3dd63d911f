"""The compiled extension, if it was built.

Without it the package still imports and runs on the reference backend;
``fused_attn.backends()`` says why the compiled backends cannot run.
"""
import torch  # noqa: F401  (loads libtorch before the extension that links it)

BUILD_HINT = "build it from the repository root with: pip install --no-build-isolation -e ."

try:
    from fused_attn import _C
except ImportError as exc:  # not built, or built against another torch
    _C = None  # type: ignore[assignment]  # (the constants below check it; _C.pyi types them)
    LOAD_ERROR = f"fused_attn._C could not be loaded ({exc}); {BUILD_HINT}"
else:
    LOAD_ERROR = ""
HAS_C = _C is not None

#: CUDA runtime version the extension was compiled with (e.g. 13000), 0 without CUDA.
CUDA_VERSION = _C.CUDA_VERSION if _C is not None else 0
#: GPU architectures compiled in, e.g. "750,800,900".
CUDA_ARCHS = _C.CUDA_ARCHS if _C is not None else ""
#: Instruction set the CPU kernels use on this machine ("avx2" or "baseline").
CPU_ISA = _C.CPU_ISA if _C is not None else ""
#: Whether the CPU kernels were compiled with OpenMP, so run on torch's intra-op
#: threads (setup.py builds without it where the compiler cannot: one thread).
CPU_OPENMP = bool(_C.CPU_OPENMP) if _C is not None else False
