"""The CUDA glue (csrc/cuda/*.cpp: the torch side of every CUDA op) on the CPU.

The kernels run under the emulation (prepare.py's rewrite, shim/emu.cpp); the
glue is compiled as it is, with three stand-in headers (include/c10/cuda:
a no-op device guard, the emulation's one stream, C10_CUDA_CHECK over its
errors) and four rewrites, each checked:

  TORCH_LIBRARY_IMPL(fused_attn, CUDA, m)  ->  TORCH_LIBRARY_IMPL(fused_attn_cuda_emu, CPU, m)
  x_in.is_cuda()                           ->  x_in.is_cpu()
  geo.x.get_device()                       ->  the emulated device (emu's cudaGetDevice)
  TORCH_LIBRARY_FRAGMENT(fused_attn, m)    ->  TORCH_LIBRARY_FRAGMENT(fused_attn_cuda_emu, m)
                                               (the planner's _single_launch_plan, which the real
                                               CUDA build defines under fused_attn already)

so torch.ops.fused_attn_cuda_emu.<op> runs the CUDA backend's code path on CPU
tensors: its checks, allocations, ATen ops on the small tensors, the planner
(single launch or two phases) and every launch. It has no sanitizer (the
kernels' own emulated suite has ASan / UBSan); it is for what that suite
cannot reach: the glue itself has otherwise never run without a GPU.

    build()  ->  the op namespace (compiles once into build/cuda_emu/glue, a few minutes on 2 cores)
"""
import glob
import os
import re
import subprocess
import sys

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")))

HERE = os.path.dirname(os.path.abspath(__file__))
EMU = os.path.dirname(HERE)
ROOT = os.path.abspath(os.path.join(EMU, "..", ".."))
BUILD = os.path.abspath(os.environ.get("EMU_GLUE_BUILD", os.path.join(ROOT, "build", "cuda_emu", "glue")))
NS = "fused_attn_cuda_emu"
OPS = ("se_forward", "se_backward", "eca_forward", "eca_backward", "cbam_forward", "cbam_backward")

# (pattern, replacement, files that must contain it)
REWRITES = [
    ("TORCH_LIBRARY_IMPL(fused_attn, CUDA, m)", f"TORCH_LIBRARY_IMPL({NS}, CPU, m)",
     ("se_cuda.cpp", "eca_cuda.cpp", "cbam_cuda.cpp")),
    ("x_in.is_cuda()", "x_in.is_cpu()", ("se_cuda.cpp", "eca_cuda.cpp", "cbam_cuda.cpp")),
    ("geo.x.get_device()", "emu_glue_device()", ("channel_gate.h",)),
    # The planner's test op: a second definition under fused_attn would abort the
    # load when fused_attn._C was built with its CUDA sources (CI's build).
    ("TORCH_LIBRARY_FRAGMENT(fused_attn, m)", f"TORCH_LIBRARY_FRAGMENT({NS}, m)", ("channel_gate.cpp",)),
]
DEVICE_FN = "\ninline int emu_glue_device() { int d = 0; cudaGetDevice(&d); return d; }\n"


def _write(path, text):
    if not os.path.exists(path) or open(path).read() != text:  # keep the build's timestamps when unchanged
        open(path, "w").write(text)


def prepare():
    """The rewritten kernels and glue under BUILD/src; returns the sources to compile."""
    subprocess.run([sys.executable, os.path.join(EMU, "prepare.py"), BUILD], check=True)
    src = os.path.join(BUILD, "src")
    glue = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
    for name in glue + ["channel_gate.h"]:
        text = open(os.path.join(ROOT, "csrc", "cuda", name)).read()
        for old, new, files in REWRITES:
            if name in files:
                if old not in text:
                    sys.exit(f"glue.py: {name} no longer contains `{old}`; update REWRITES")
                text = text.replace(old, new)
        if name == "channel_gate.h":
            text = text.replace("namespace fused_attn::cuda {\n", "namespace fused_attn::cuda {\n" + DEVICE_FN, 1)
            if DEVICE_FN not in text:
                sys.exit("glue.py: channel_gate.h has no `namespace fused_attn::cuda {`")
        if re.search(r"TORCH_LIBRARY\w*\(\s*fused_attn\s*,", text):  # fused_attn._C registers those already
            sys.exit(f"glue.py: {name} still registers under fused_attn; add a rewrite to {NS}")
        _write(os.path.join(src, name), text)
    # The kernels as C++ (a .cu name would send them to nvcc).
    kernels = []
    for cu in sorted(glob.glob(os.path.join(src, "*.cu"))):
        cpp = cu + ".cpp"
        _write(cpp, open(cu).read())
        kernels.append(cpp)
    common = sorted(glob.glob(os.path.join(ROOT, "csrc", "*_common.cpp")))
    return (kernels + [os.path.join(src, n) for n in glue] + common
            + [os.path.join(EMU, "shim", "emu.cpp"), os.path.join(HERE, "emu_device.cpp")])


def build(verbose=False):
    """Compiles (once) and loads the emulated CUDA backend; returns torch.ops.fused_attn_cuda_emu."""
    import fused_attn  # noqa: F401  (the schemas: fused_attn._C)
    from torch.utils.cpp_extension import load

    sources = prepare()
    os.makedirs(os.path.join(BUILD, "ext"), exist_ok=True)
    lib = load(
        name=NS,
        sources=sources,
        extra_include_paths=[os.path.join(HERE, "include"), os.path.join(EMU, "shim", "include"),
                             os.path.join(BUILD, "src"), os.path.join(ROOT, "csrc", "cuda"), os.path.join(ROOT, "csrc")],
        extra_cflags=["-O1", "-Wno-unknown-pragmas", "-Wno-unused-variable"],
        # The emulated runtime's cudaGetLastError & co. must not bind to a real libcudart torch may have loaded.
        extra_ldflags=["-Wl,-Bsymbolic"],
        build_directory=os.path.join(BUILD, "ext"),
        is_python_module=False,
        with_cuda=False,
        verbose=verbose,
    )
    del lib
    if not hasattr(build, "_lib"):
        build._lib = torch.library.Library(NS, "FRAGMENT")
        for op in OPS:
            schema = str(getattr(torch.ops.fused_attn, op).default._schema)
            build._lib.define(re.sub(r"^fused_attn::", "", schema))
    return getattr(torch.ops, NS)


if __name__ == "__main__":
    ops = build(verbose=True)
    print("built:", [op for op in OPS if hasattr(ops, op)])
