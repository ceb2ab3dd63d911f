"""Where the CUDA toolkit is and which GPU architectures to build for: shared
by setup.py and tools/cmake_build.py so both builds agree."""
import glob
import os
import shutil


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
