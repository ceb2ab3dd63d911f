"""What each CUDA kernel costs in registers, spills, shared memory and stack,
as ptxas reports it: a static check that needs nvcc only, no GPU.

    python tools/ptxas_report.py [--arch 90 --arch 80] [--md OUT.md] [--check]

Compiles every csrc/cuda/*.cu (device code only, with the flags torch's
BuildExtension adds and setup.py's -O3 -lineinfo) under `-Xptxas -v`, and
prints one row per kernel instantiation. Registers decide how many threads an
SM can hold (65536 per SM; a block of 512 threads at more than 128 registers
cannot launch at all, which ptxas prevents where the kernel declares
__launch_bounds__ by spilling instead); spills go to local memory (L1, then
L2) inside what should be register-only loops. --check exits 1 if a kernel
spills that SPILLS_KNOWN does not list, or one listed no longer spills (the
list is kept exact, so a change that adds or removes a spill says so).
"""
import argparse
import collections
import glob
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# torch.utils.cpp_extension's nvcc flags for an extension, and setup.py's.
FLAGS = ["-std=c++17", "-O3", "-lineinfo", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
         "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]

# (arch, kernel as shortened below) of the kernels known to spill, with why
# they are left so: the GPU has to say whether the spills cost anything.
SPILLS_KNOWN = {
    # float64 only (gradcheck's dtype): 4 bytes in fc1's split sums, where
    # ptxas stops at 64 registers (the kernel's bound is 256 threads: it
    # could take 255).
    ("sm_90", "se_linear_kernel<double, LinIn::Rows, LinOut::Parts, false>"),
    # The spatial gate's conv in float32 (maps of N·H·W pixels, not passes
    # over x): 48-52 bytes around its per-pixel BatchNorm moments, whose
    # float64 division is a call, since its weights are staged in shared
    # memory (2026-12-06).
    ("sm_90", "spatial_conv_kernel<float>"),
    ("sm_80", "spatial_conv_kernel<float>"),
    # CBAM's backward Σ_c dy·x1 pass (NCHW) in float16 / bfloat16: eight
    # outputs per thread with two steps' loads unrolled, at 512 threads (128
    # registers at most). Unrolling once, or pipelining the loads by hand,
    # removed these spills but halved the loads in flight or moved a spill to
    # the float32 instantiation (2026-12-06): left for a GPU to measure.
    ("sm_90", "reduce_cols_kernel<__nv_bfloat16, CbamReduce::PixelReduce, 8, false>"),
    ("sm_90", "reduce_cols_kernel<__half, CbamReduce::PixelReduce, 8, false>"),
    ("sm_80", "reduce_cols_kernel<__nv_bfloat16, CbamReduce::PixelReduce, 8, false>"),
    ("sm_80", "reduce_cols_kernel<__half, CbamReduce::PixelReduce, 8, false>"),
    # sm_80 only, 12 bytes each: the forward's fc2 in 16-bit types (ptxas
    # again stopping at 64 registers), on N x C values, not passes over x.
    # (ECA's two-phase excitation in float32 spilled too until its window's
    # reads became one branch per tap.)
    ("sm_80", "se_linear_kernel<__half, LinIn::PartsAct, LinOut::Gate, false>"),
    ("sm_80", "se_linear_kernel<__nv_bfloat16, LinIn::PartsAct, LinOut::Gate, false>"),
    # sm_80 only, 4-8 bytes: the backward's first layer since it also adds
    # Σ dy·x's segments as it stages them (which saved the combine's launch),
    # likewise on N x C values.
    ("sm_80", "se_linear_kernel<__half, LinIn::GateGrad, LinOut::Spread, true>"),
    ("sm_80", "se_linear_kernel<__nv_bfloat16, LinIn::GateGrad, LinOut::Spread, true>"),
    ("sm_80", "se_linear_kernel<double, LinIn::GateGrad, LinOut::Parts, true>"),
}

Kernel = collections.namedtuple("Kernel", "file arch name regs smem stack spill_st spill_ld")


def shorten(name):
    """A demangled kernel name without namespaces, parameters or enum casts."""
    name = re.sub(r"\(fused_attn::cuda::(\w+)\)(\d+)", lambda m: f"{m.group(1)}#{m.group(2)}", name)
    name = name.replace("fused_attn::cuda::", "").replace("(anonymous namespace)::", "")
    name = name.split("(")[0]
    enums = {"CbamReduce": ["ChannelPool", "PixelReduce", "ChannelReduce"], "LinIn": ["Rows", "PartsAct", "GateGrad",
             "PartsActGrad"], "LinOut": ["Parts", "Gate", "Spread"]}

    def enum(m):
        names = enums.get(m.group(1))
        i = int(m.group(2))
        return f"{m.group(1)}::{names[i]}" if names and i < len(names) else m.group(0)
    return re.sub(r"(\w+)#(\d+)", enum, name).replace("void ", "")


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def compile_one(src, arch, nvcc):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, *FLAGS, f"-arch=sm_{arch}", "-Xptxas", "-v", "-c", src, "-o", os.path.join(tmp, "k.o"),
               "-I", os.path.join(ROOT, "csrc")]
        r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ptxas_report: {' '.join(cmd)} failed:\n{r.stderr[-4000:]}")
    return r.stderr


def parse(text, file):
    """Rows per kernel; the stack / spill line is matched to its kernel by
    the name on its "Function properties for" line, whatever the order."""
    used, props = [], {}
    cur, prop_of = None, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for '(sm_\d+)'", line)
        if m:
            cur = (m.group(1), m.group(2))
            continue
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            prop_of = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and prop_of:
            props[prop_of] = tuple(int(g) for g in m.groups())
            prop_of = None
            continue
        m = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
        if m and cur:
            used.append((cur[0], cur[1], int(m.group(1)), int(m.group(2) or 0)))
            cur = None
    entries = len(re.findall(r"Compiling entry function", text))
    if entries != len(used):
        sys.exit(f"ptxas_report: {entries} entry functions in the ptxas output for {file}, "
                 f"but {len(used)} 'Used ... registers' lines parsed")
    names = demangle([u[0] for u in used])
    return [Kernel(file, arch, shorten(n), regs, smem, *props.get(mangled, (0, 0, 0)))
            for (mangled, arch, regs, smem), n in zip(used, names, strict=True)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", action="append", help="compute capability without the dot (default: 90 and 80)")
    ap.add_argument("--md", help="also write the table as markdown here")
    ap.add_argument("--check", action="store_true", help="exit 1 unless the spills are exactly SPILLS_KNOWN")
    ap.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"))
    args = ap.parse_args()
    archs = args.arch or ["90", "80"]
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    jobs = [(s, a) for a in archs for s in sources]
    with ThreadPoolExecutor(max_workers=int(os.environ.get("MAX_JOBS", os.cpu_count() or 2))) as pool:
        texts = list(pool.map(lambda j: compile_one(j[0], j[1], args.nvcc), jobs))
    kernels = [k for (s, _), t in zip(jobs, texts, strict=True) for k in parse(t, os.path.relpath(s, ROOT))]
    if not kernels:
        sys.exit("ptxas_report: no kernel found in any csrc/cuda/*.cu")
    nvcc_version = subprocess.run([args.nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]

    lines = [f"# ptxas resource usage of the CUDA kernels ({nvcc_version})", "",
             "`python tools/ptxas_report.py" + "".join(f" --arch {a}" for a in archs) + "`: every kernel "
             "instantiation of csrc/cuda/*.cu compiled under `-Xptxas -v` with the extension's flags. "
             "Static: no GPU ran. Registers per thread, static shared memory (dynamic comes at launch), "
             "stack frame and spill bytes per thread.", ""]
    for arch in archs:
        ks = sorted((k for k in kernels if k.arch == f"sm_{arch}"), key=lambda k: (k.file, k.name))
        spilled = [k for k in ks if k.spill_st or k.spill_ld]
        lines += [f"## sm_{arch}: {len(ks)} kernels, at most {max(k.regs for k in ks)} registers, "
                  f"{len(spilled)} spilling", "",
                  "| file | kernel | registers | smem (B) | stack (B) | spill stores / loads (B) |",
                  "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {k.file.split('/')[-1]} | `{k.name}` | {k.regs} | {k.smem} | {k.stack} | "
                  f"{k.spill_st} / {k.spill_ld} |" for k in ks]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    if args.check:
        seen = {(k.arch, k.name) for k in kernels if k.spill_st or k.spill_ld}
        known = {s for s in SPILLS_KNOWN if s[0] in {f"sm_{a}" for a in archs}}
        new, gone = seen - known, known - seen
        for a, n in sorted(new):
            print(f"ptxas_report: {a} {n} spills (not in SPILLS_KNOWN)", file=sys.stderr)
        for a, n in sorted(gone):
            print(f"ptxas_report: {a} {n} no longer spills (drop it from SPILLS_KNOWN)", file=sys.stderr)
        return 1 if new or gone else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
