#!/usr/bin/env python3
"""Copies the CUDA kernel sources (csrc/cuda) into $BUILD/src, rewritten for the
CPU emulation (shim/include/emu.h):

  kernel<<<cfg>>>(args);  ->  ::emu::launch("kernel", __PRETTY_FUNCTION__, ::emu::Cfg(cfg), [&] { kernel(args); });
  __shared__ T a[..], b[..];  ->  the same, then ::emu::shared_decl(a, sizeof(a)); ... (NaN-poisoned per block)
  se_fused.cu: its `#if ... __CUDA_ARCH__ >= 900` guards -> `#if 1`, and its
  `extern __shared__ ... smem_raw[];` -> emu::dyn_smem (per block of a cluster).
  load_pack's read  ->  ::emu::on_load(p) first (the order a launch reads a watched range in)
  65535 (the grid.y / grid.z cap)  ->  EMU_CAP_65535, emu::grid_cap, which `emu_test --cap2` sets
                                       to 2 so the kernels' grid-stride loops over samples run.

    python3 prepare.py BUILD_DIR
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "..", "csrc", "cuda")
FILES = ["cbam_kernels.cu", "cbam_cuda.h", "se_kernels.cuh", "se_cuda.h", "se_forward.cu", "se_backward.cu", "se_fused.cu"]
# se_fused.cu (clusters): its kernels' bodies are for sm_90 and newer, and they
# use dynamic shared memory only, which emu::dyn_smem gives per block.
ARCH_GUARD = "#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900"
DYN_SHARED = "extern __shared__ __align__(16) unsigned char smem_raw[];"
# se_kernels.cuh's load_pack, every pass's read of x and dy: reported to the
# emulation first (emu::on_load, for its watched range: glue's watch op).
LOAD_PACK = "  return *reinterpret_cast<const Pack<T, V>*>(p);"
# The kernel's name, with template arguments: a launch behind an `if` on the same
# line would be rewritten into an unconditional one, so it is refused.
LAUNCH = re.compile(r'^(\s*)([A-Za-z_][\w:]*(?:<[^;()]*>)?)<<<(.*)>>>\((.*)\);\s*$')
SHARED = re.compile(r'^(\s*)__shared__\s+([A-Za-z_][\w:<>]*)\s+(.*);\s*$')


def names(decls):
    """The variable names of a declaration list such as `a[4][8], b[8]`."""
    out, depth, cur = [], 0, ''
    for ch in decls:
        depth += (ch == '[') - (ch == ']')
        if ch == ',' and depth == 0:
            out.append(cur)
            cur = ''
        else:
            cur += ch
    out.append(cur)
    return [re.match(r'\s*([A-Za-z_]\w*)', d).group(1) for d in out]


def rewrite(text):
    out, launches = [], 0
    for line in text.split('\n'):
        if '<<<' in line:
            m = LAUNCH.match(line)
            if not m:
                sys.exit(f"prepare.py: a launch the emulation cannot rewrite (one line, `k<<<cfg>>>(args);`): {line}")
            ind, k, cfg, args = m.groups()
            note = ' ::emu::note("wpr", wpr);' if 'wpr' in args else ''
            out.append(f'{ind}{{{note} ::emu::launch("{k}", __PRETTY_FUNCTION__, ::emu::Cfg({cfg}), '
                       f'[&] {{ {k}({args}); }}); }}')
            launches += 1
            continue
        if line.strip() == ARCH_GUARD:
            out.append("#if 1  // emu: the sm_90 body")
            continue
        if line.strip() == DYN_SHARED:
            out.append(line.replace(DYN_SHARED, "unsigned char* smem_raw = ::emu::dyn_smem(__PRETTY_FUNCTION__);"))
            continue
        if '__shared__' in line and not line.lstrip().startswith('//'):
            m = SHARED.match(line)
            if not m:
                sys.exit(f"prepare.py: a __shared__ declaration the emulation cannot rewrite: {line}")
            out.append(line)
            out.append(m.group(1) + ' '.join(f'::emu::shared_decl({n}, sizeof({n}));' for n in names(m.group(3))))
            continue
        out.append(line.replace('65535', 'EMU_CAP_65535'))
    return '\n'.join(out), launches


def main():
    dst = os.path.join(sys.argv[1], "src")
    os.makedirs(dst, exist_ok=True)
    total = 0
    for f in FILES:
        src = open(os.path.join(SRC, f)).read()
        text, n = rewrite(src)
        if f == "se_fused.cu" and (src.count(ARCH_GUARD) != 2 or src.count(DYN_SHARED) != 2 or "cudaLaunchKernelEx" not in src):
            sys.exit("prepare.py: se_fused.cu's kernels no longer look as the emulation expects "
                     "(two sm_90 guards, two `extern __shared__` buffers, cudaLaunchKernelEx)")
        if f == "se_kernels.cuh":
            if text.count(LOAD_PACK) != 1:
                sys.exit("prepare.py: se_kernels.cuh's load_pack no longer reads `" + LOAD_PACK.strip() + "`")
            text = text.replace(LOAD_PACK, "  ::emu::on_load(p);\n" + LOAD_PACK)
        total += n
        path = os.path.join(dst, f)
        if not os.path.exists(path) or open(path).read() != text:  # keep make's timestamps when unchanged
            open(path, "w").write(text)
    if total == 0:
        sys.exit("prepare.py: no kernel launch found in the sources")


if __name__ == "__main__":
    main()
