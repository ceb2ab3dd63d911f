"""What a build of fused_attn._C was made from, as one line: a hash of the
files the build reads (csrc/, setup.py, tools/build_env.py), the torch and
CUDA versions it was built against, and the GPU architectures.

A lent GPU has a few minutes of device time, and building the CUDA sources
there takes several of them. `make gpu-prebuild` builds the extension on the
development machine against the GPU machine's torch (the support floor, 2.11)
and writes this line beside it (.prebuilt/); bench/gpu_check.sh uses the
carried build only when the line it computes there is the same — same
sources, same torch, same architectures — and the library loads; otherwise it
builds as before.

    python tools/build_stamp.py [ARCHS]   # ARCHS: default $TORCH_CUDA_ARCH_LIST
"""
import hashlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_files():
    """The files a build compiles or runs, repository-relative, sorted."""
    files = ["setup.py", os.path.join("tools", "build_env.py")]
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "csrc")):
        dirnames.sort()
        files += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames]
    return sorted(files)


def sources_hash():
    h = hashlib.sha256()
    for rel in source_files():
        with open(os.path.join(ROOT, rel), "rb") as f:
            data = f.read()
        h.update(rel.replace(os.sep, "/").encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()[:16]


def stamp(archs):
    import torch

    return f"sources={sources_hash()} torch={torch.__version__} cuda={torch.version.cuda} archs={archs}"


if __name__ == "__main__":
    archs = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    print(stamp(archs))
