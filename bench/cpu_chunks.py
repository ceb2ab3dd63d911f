"""The chunk size of the CPU kernels' passes over batches: every op at every
chunk size, with the size the library picks marked m and the one it picked
before (2026-12-04) marked o.

* SE and ECA, forward and backward: m is pipeline_chunk's (se_kernel.cpp); o
  was one chunk as large as half the last-level cache allows (4-32 MiB).
* CBAM's forward: m is sample_chunk's (cbam_kernel.cpp: the cache budget, at
  least one sample per thread, evened out to a multiple of the threads). Its
  chunk is forced through FUSED_ATTN_CPU_CHUNK_BYTES, which sample_chunk then
  evens out too, so only such sizes are timed (before, it took the budget's
  size as is: 5 + 3 at N=8 here; bench/results/<cpu>/cpu_chunks.txt keeps
  that run). The others' chunk is forced through FUSED_ATTN_CPU_CHUNK_SAMPLES.

The ops are called directly (torch.ops.fused_attn.*, no autograd or module),
float32, ResNet-50 sites (SE rd = C/16, relu/sigmoid, avg pool; ECA k = 5, 5, 5,
7), both layouts, with x and dy rotated through >= 1 GiB of copies so each call
reads them from DRAM (CBAM: through fused_attn.cbam under no_grad, eval
BatchNorm, rd = C/16, 7x7). The sizes take turns call by call, so this VM's drift hits them alike.
Medians of ROUNDS calls per size, in ms.

    python bench/cpu_chunks.py [N] [ROUNDS]
"""
import math
import os
import statistics
import subprocess
import sys
import time

import torch

import fused_attn  # noqa: F401  (loads the ops)

SITES = [(256, 56, 5), (512, 28, 5), (1024, 14, 5), (2048, 7, 7)]  # ResNet-50: C, H, ECA's k
FIXED = 256 << 10  # kChunkFixedBytes


def cache_bytes(level):
    try:
        return int(subprocess.run(["getconf", f"LEVEL{level}_CACHE_SIZE"], capture_output=True, text=True).stdout)
    except (OSError, ValueError):
        return 0


def budget():
    env = int(os.environ.get("FUSED_ATTN_CPU_CHUNK_BYTES", "0") or 0)
    if env > 0:
        return env
    cache = cache_bytes(3) or cache_bytes(2) or 16 << 20
    return min(max(cache // 2, 4 << 20), 32 << 20)


def old_chunk(n, touched):
    return min(max(budget() // touched, 1), n)


def model_chunk(n, first_read, touched, excite):
    """pipeline_chunk, as the C++ computes it."""
    if n <= 1:
        return 1
    best = math.sqrt(n * (FIXED + excite) / first_read)
    nb = min(max(round(best), 1), min(n, old_chunk(n, touched)))
    chunks = -(-n // nb)
    return -(-n // chunks)


def timed(fn, chunk, var="FUSED_ATTN_CPU_CHUNK_SAMPLES", scale=1):
    os.environ[var] = str(chunk * scale)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    torch.manual_seed(0)
    torch.set_num_threads(2)
    ops = torch.ops.fused_attn
    base = sorted({1, 2, 4, 8, n} & set(range(1, n + 1)))
    print(f"# {subprocess.run(['uname', '-n'], capture_output=True, text=True).stdout.strip()}: "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, N={n}, float32, L3 {cache_bytes(3) >> 20} MiB, "
          f"L2 {cache_bytes(2) >> 10} KiB, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    print(f"# medians of {rounds} calls in ms per samples-per-chunk (size=ms); o = the old choice, "
          f"m = pipeline_chunk's; m/o their ratio")
    for C, H, k in SITES:
        xs = C * H * H * 4
        copies = max(2, (1 << 30) // (2 * n * xs))
        for cl in (False, True):
            fmt = torch.channels_last if cl else torch.contiguous_format
            xs_ = [torch.randn(n, C, H, H).contiguous(memory_format=fmt) for _ in range(copies)]
            dys = [torch.randn(n, C, H, H).contiguous(memory_format=fmt) for _ in range(copies)]
            rd = C // 16
            w1, w2 = torch.randn(rd, C) * 0.05, torch.randn(C, rd) * 0.05
            w = torch.randn(k) * 0.3
            se_w = (w1.numel() + w2.numel()) * 4
            _, p, m, h, z = ops.se_forward(xs_[0], w1, None, w2, None, "relu", "sigmoid", "avg")
            _, pe, ze = ops.eca_forward(xs_[0], w, None, "zeros", "sigmoid")
            i = [0]

            def nxt():
                i[0] = (i[0] + 1) % copies
                return xs_[i[0]], dys[i[0]]

            cases = [
                ("se", "fwd", 1, 2, se_w,
                 lambda: ops.se_forward(nxt()[0], w1, None, w2, None, "relu", "sigmoid", "avg")),
                ("se", "bwd", 2, 3, 4 * se_w,
                 lambda: ops.se_backward(*nxt()[::-1], w1, w2, p, m, h, z, "relu", "sigmoid", "avg", False, False)),
                ("eca", "fwd", 1, 2, k * 4, lambda: ops.eca_forward(nxt()[0], w, None, "zeros", "sigmoid")),
                ("eca", "bwd", 2, 3, k * 4,
                 lambda: ops.eca_backward(*nxt()[::-1], w, pe, ze, "zeros", "sigmoid", False)),
            ]
            with torch.no_grad():
                for op, pas, first, touched, excite, fn in cases:
                    o = old_chunk(n, touched * xs)
                    mc = model_chunk(n, first * xs, touched * xs, excite)
                    sizes = sorted(set(base) | {o, mc})
                    for s in sizes:
                        timed(fn, s)
                    ts = {s: [] for s in sizes}
                    for r in range(rounds):
                        for s in (sizes if r % 2 == 0 else sizes[::-1]):
                            ts[s].append(timed(fn, s))
                    med = {s: statistics.median(v) * 1e3 for s, v in ts.items()}
                    cells = []
                    for s in sizes:
                        mark = ("o" if s == o else "") + ("m" if s == mc else "")
                        cells.append(f"{s}={med[s]:.3f}{mark}")
                    print(f"{op:<4} {pas:<4} {f'{C}x{H}x{H}':<11} {'cl' if cl else 'nchw':<6} " + "  ".join(cells)
                          + f"  m/o {med[mc] / med[o]:4.2f}", flush=True)
                # CBAM's forward (eval BatchNorm, rd = C/16, 7x7): its chunk is
                # sample_chunk's (the byte budget, at least one sample per
                # thread), unchanged by pipeline_chunk; forced through the budget.
                wc1, wc2 = torch.randn(rd, C) * 0.1, torch.randn(C, rd) * 0.1
                wsp = torch.randn(1, 2, 7, 7) * 0.1
                bn = dict(bn_weight=torch.ones(1), bn_bias=torch.zeros(1), bn_running_mean=torch.zeros(1),
                          bn_running_var=torch.ones(1))

                def cbam_fwd():
                    return fused_attn.cbam(nxt()[0], wc1, None, wc2, None, wsp, **bn)

                threads = torch.get_num_threads()

                def sample_chunk(c):
                    c = min(n, max(c, threads))
                    c = -(-n // -(-n // c))  # evened out
                    return max(c - c % threads if c > threads else c, 1)

                mc = sample_chunk(old_chunk(n, 2 * xs))
                sizes = sorted({c for c in set(base) | {mc} if sample_chunk(c) == c})
                var = "FUSED_ATTN_CPU_CHUNK_BYTES"
                os.environ.pop("FUSED_ATTN_CPU_CHUNK_SAMPLES", None)
                for c in sizes:
                    timed(cbam_fwd, c, var, 2 * xs)
                ts = {c: [] for c in sizes}
                for r in range(rounds):
                    for c in (sizes if r % 2 == 0 else sizes[::-1]):
                        ts[c].append(timed(cbam_fwd, c, var, 2 * xs))
                os.environ.pop(var, None)
                med = {c: statistics.median(v) * 1e3 for c, v in ts.items()}
                cells = [f"{c}={med[c]:.3f}{'m' if c == mc else ''}" for c in sizes]
                print(f"{'cbam':<4} {'fwd':<4} {f'{C}x{H}x{H}':<11} {'cl' if cl else 'nchw':<6} " + "  ".join(cells),
                      flush=True)
            xs_.clear()  # freed before the next layout's copies are made
            dys.clear()
    os.environ.pop("FUSED_ATTN_CPU_CHUNK_SAMPLES", None)


if __name__ == "__main__":
    main()
