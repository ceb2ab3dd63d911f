"""A/B of the CUDA backend's SE forward paths at the ResNet-50 SE sites where
the planner is closest to its limits, against a device copy of x:

* auto: what the dispatcher picks (the single launch where it has a plan);
* fused: the single launch forced (FUSED_ATTN_CUDA_PATH=fused; "-" where it
  has no plan for the shape);
* 2p-coop: the two-phase passes with the excitation as one cooperative
  launch (FUSED_ATTN_CUDA_PATH=two_phase, FUSED_ATTN_CUDA_EXCITE=cooperative:
  three launches);
* 2p-launches: the two-phase passes, a launch per phase
  (FUSED_ATTN_CUDA_EXCITE=launches: four or five);
* 2p-in-order: 2p-coop with the rescale walking x from the first element
  on, as the pool does (FUSED_ATTN_CUDA_ORDER=forward), where the others
  walk it from the last back (the default, alternate).

Medians of CUDA-event times in µs, the providers taking turns; forward only,
outputs not poisoned. Answers two open questions of issue 3: whether the
grid barriers beat the launch gaps, and whether the planner's rule against
re-reading the weights (it sends 2048×7×7 at N = 32 and 128 to the two-phase
path) costs more than it saves; and whether the reversed rescale saves
anything where x is larger than L2 (128×2048×7×7 in float32: 51 MB).

    python -m bench.ab_cuda_paths [--out DIR] [--device cpu]   # cpu: a smoke run of the plumbing
"""
import argparse
import os
import sys

import torch

import fused_attn  # noqa: F401  (registers torch.ops.fused_attn)

from bench.common import measure_ab, restored_env, write_ab

SITES = [(32, 2048, 7, 7), (128, 2048, 7, 7), (32, 1024, 14, 14), (128, 1024, 14, 14)]
PATHS = {"auto": ("auto", "cooperative", "alternate"), "fused": ("fused", "cooperative", "alternate"),
         "2p-coop": ("two_phase", "cooperative", "alternate"), "2p-launches": ("two_phase", "launches", "alternate"),
         "2p-in-order": ("two_phase", "cooperative", "forward")}
KNOBS = ("FUSED_ATTN_CUDA_PATH", "FUSED_ATTN_CUDA_EXCITE", "FUSED_ATTN_CUDA_ORDER")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", help="also write the table to DIR/ab_cuda_paths.md")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=40)
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    sites = SITES if cuda else [(2, 64, 7, 7)]
    os.environ.pop("FUSED_ATTN_DEBUG_POISON", None)
    lines = ["| N×C×H×W | dtype | layout | copy | " + " | ".join(PATHS) + " |",
             "|---|---|---|---:|" + "---:|" * len(PATHS)]
    op = torch.ops.fused_attn.se_forward
    with restored_env(*KNOBS):
        for shape in sites:
            N, C, H, W = shape
            rd = C // 16
            for dtype in (torch.bfloat16, torch.float32):
                for fmt in (torch.channels_last, torch.contiguous_format):
                    g = torch.Generator().manual_seed(0)
                    x = torch.randn(shape, generator=g).to(args.device, dtype).contiguous(memory_format=fmt)
                    w1 = (torch.randn(rd, C, generator=g) / C ** 0.5).to(args.device, dtype)
                    w2 = (torch.randn(C, rd, generator=g) / rd ** 0.5).to(args.device, dtype)
                    b1 = torch.zeros(rd, device=args.device, dtype=dtype)
                    b2 = torch.zeros(C, device=args.device, dtype=dtype)
                    y = torch.empty_like(x)

                    def run(*knobs):
                        os.environ.update(zip(KNOBS, knobs, strict=True))
                        return op(x, w1, b1, w2, b2, "relu", "sigmoid", "avg")

                    providers = {"copy": lambda i: y.copy_(x)}
                    for name, knobs in PATHS.items():
                        try:
                            run(*knobs)  # warm: plans, occupancy queries
                        except RuntimeError as e:  # the forced single launch without a plan
                            print(f"# {shape} {dtype} {name}: {str(e).splitlines()[0][:120]}", file=sys.stderr)
                            continue
                        providers[name] = lambda i, k=knobs: run(*k)
                    res = measure_ab(providers, cuda, rounds=args.rounds, reps=args.reps)
                    cells = [f"{res[n]['median_ms'] * 1e3:.1f}" if n in res else "-" for n in ["copy", *PATHS]]
                    layout = "cl" if fmt is torch.channels_last else "nchw"
                    lines.append(f"| {N}×{C}×{H}×{W} | {str(dtype)[6:]} | {layout} | " + " | ".join(cells) + " |")
                    print(lines[-1], flush=True)
    write_ab(args.out, "ab_cuda_paths", "SE forward paths", lines, cuda)


if __name__ == "__main__":
    main()
