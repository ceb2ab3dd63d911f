"""Build fused_attn._C with CMake (CMakeLists.txt) and check that the library
loads and its ops agree with the reference. Run by `make cmake` and by CI, so
the CMake build cannot rot.

    python tools/cmake_build.py [--build-dir build/cmake]
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from tools.build_env import compiler_is_gcc, default_arch_list, find_cuda_home, openmp_off, pip_cuda_library  # noqa: E402

SMOKE = r"""
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("fused_attn._C", sys.argv[1])
lib = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lib)          # registers fused_attn::se_forward / se_backward
torch.manual_seed(0)
x = torch.randn(3, 40, 9, 9).to(memory_format=torch.channels_last)
w1, b1, w2, b2 = torch.randn(5, 40) * 0.2, torch.randn(5), torch.randn(40, 5) * 0.4, torch.randn(40)
y = torch.ops.fused_attn.se_forward(x, w1, b1, w2, b2, "silu", "sigmoid", "avgmax")[0]
p = 0.5 * x.mean((2, 3)) + 0.5 * x.amax((2, 3))
ref = x * torch.sigmoid(torch.nn.functional.silu(p @ w1.T + b1) @ w2.T + b2)[:, :, None, None]
torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
# GCC on Linux always has OpenMP: a build that lost it would run on one thread.
assert lib.CPU_OPENMP or sys.argv[2] != "require-openmp", "the CMake build is without OpenMP"
print(f"cmake build OK: {sys.argv[1]} (CUDA {lib.CUDA_VERSION}, CPU ISA {lib.CPU_ISA}, OpenMP {bool(lib.CPU_OPENMP)})")
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build-dir", default=os.path.join(ROOT, "build", "cmake"))
    args = parser.parse_args()
    configure = ["cmake", "-S", ROOT, "-B", args.build_dir, f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                 f"-DPython3_EXECUTABLE={sys.executable}"]
    env = dict(os.environ)
    cuda_home = find_cuda_home()
    if torch.version.cuda is not None:
        if cuda_home is None:
            sys.exit("torch is a CUDA build but no CUDA toolkit was found; set CUDA_HOME")
        configure += [f"-DCUDAToolkit_ROOT={cuda_home}", f"-DCUDA_TOOLKIT_ROOT_DIR={cuda_home}",
                      f"-DCMAKE_CUDA_COMPILER={os.path.join(cuda_home, 'bin', 'nvcc')}"]
        # torch's CMake config links nvrtc; minimal toolkits ship it only as a wheel.
        if not any(f.startswith("libnvrtc.so") for f in os.listdir(os.path.join(cuda_home, "lib64"))):
            nvrtc = pip_cuda_library("nvrtc")
            if nvrtc:
                configure.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc}")
        archs = default_arch_list(torch)
        if archs:
            env["TORCH_CUDA_ARCH_LIST"] = archs
    subprocess.run(configure, check=True, env=env)
    jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
    subprocess.run(["cmake", "--build", args.build_dir, "-j", jobs], check=True, env=env)
    subprocess.run([sys.executable, "-c", SMOKE, os.path.join(args.build_dir, "_C.abi3.so"),
                    "require-openmp" if gcc_on_linux(args.build_dir) and not openmp_off() else ""], check=True)


def gcc_on_linux(build_dir):
    """Whether the CMake build's C++ compiler is GCC on Linux (from its cache)."""
    if not sys.platform.startswith("linux"):
        return False
    with open(os.path.join(build_dir, "CMakeCache.txt")) as f:
        cxx = next((ln.split("=", 1)[1].strip() for ln in f if ln.startswith("CMAKE_CXX_COMPILER:")), "")
    return compiler_is_gcc(cxx)


if __name__ == "__main__":
    main()
