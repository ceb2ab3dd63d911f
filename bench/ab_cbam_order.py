"""A/B of the order the CUDA backend's CBAM passes walk the batch, at the
ResNet-50 CBAM sites (r = 16, 7×7 spatial kernel), against a device copy of x:

* fwd / bwd alternate: the default (FUSED_ATTN_CUDA_ORDER=alternate): each
  direction's second pass (the forward's channel pool of x·g, the backward's
  Σ_hw dx1·x) walks the samples from the last back, so it starts on what the
  pass before it read last;
* fwd / bwd forward: every pass from the first sample on (=forward).

The outputs are the same bits either way (tools/cuda_emu/glue/test_glue.py,
test_cbam_pass_order); what may differ is how much of x (and dy) the second
and third passes find in L2 instead of DRAM, where |x| is larger than L2.
Forward: cbam_forward with the BatchNorm's running statistics (eval, as
bench.ops times it); backward: cbam_backward from a training forward's saved
tensors. Medians of CUDA-event times in µs, the providers taking turns.

    python -m bench.ab_cbam_order [--out DIR] [--device cpu]   # cpu: a smoke run of the plumbing
"""
import argparse
import os

import torch

import fused_attn  # noqa: F401  (registers torch.ops.fused_attn)

from bench.common import measure_ab, restored_env, write_ab

SITES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
ORDERS = ("forward", "alternate")
KEY = "FUSED_ATTN_CUDA_ORDER"


def site_args(N, C, H, dtype, fmt, device, train):
    g = torch.Generator().manual_seed(0)
    rd = C // 16
    x = torch.randn(N, C, H, H, generator=g).to(device, dtype).contiguous(memory_format=fmt)
    w1 = (torch.randn(rd, C, generator=g) / C ** 0.5).to(device, dtype)
    w2 = (torch.randn(C, rd, generator=g) / rd ** 0.5).to(device, dtype)
    ws = (torch.randn(2, 7, 7, generator=g) / 10).to(device, dtype)
    bn_w, bn_b = torch.ones(1, device=device, dtype=dtype), torch.zeros(1, device=device, dtype=dtype)
    rm, rv = (None, None) if train else (torch.zeros(1, device=device), torch.ones(1, device=device))
    return (x, w1, None, w2, None, ws, bn_w, bn_b, rm, rv, 1e-5, "relu", "sigmoid", False, False)


def backward_args(a, out, dy):
    x, w1, b1, w2, b2, ws, bn_w, bn_b, rm, rv, eps, act, gate, light, max_first = a
    _, pooled, logits, smap, z, stats = out
    return (dy, x, w1, b1, w2, b2, ws, bn_w, bn_b, pooled, logits, smap, z, stats, rm is None, eps, act, gate,
            light, max_first)


def site_row(N, C, H, dtype, fmt, args, names):
    """One table row: every provider timed at one site (its tensors freed on return)."""
    cuda = args.device == "cuda"
    fwd, bwd = torch.ops.fused_attn.cbam_forward, torch.ops.fused_attn.cbam_backward
    eval_args = site_args(N, C, H, dtype, fmt, args.device, train=False)
    train_args = site_args(N, C, H, dtype, fmt, args.device, train=True)
    x = eval_args[0]
    y = torch.empty_like(x)
    saved = fwd(*train_args)
    dy = torch.randn_like(x)
    bargs = backward_args(train_args, saved, dy)

    def run(op, a, order):
        os.environ[KEY] = order
        return op(*a)

    providers = {"copy": lambda i: y.copy_(x)}
    for order in ORDERS:
        providers[f"fwd {order}"] = lambda i, o=order: run(fwd, eval_args, o)
    for order in ORDERS:
        providers[f"bwd {order}"] = lambda i, o=order: run(bwd, bargs, o)
    for fn in providers.values():
        fn(0)  # warm
    res = measure_ab(providers, cuda, rounds=args.rounds, reps=args.reps)
    cells = [f"{res[n]['median_ms'] * 1e3:.1f}" for n in names]
    layout = "cl" if fmt is torch.channels_last else "nchw"
    mb = x.numel() * x.element_size() / 1e6
    return f"| {N}×{C}×{H}×{H} | {str(dtype)[6:]} | {layout} | {mb:.1f} | " + " | ".join(cells) + " |"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", help="also write the table to DIR/ab_cbam_order.md")
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    grid = [(N, C, H) for N in args.batch for C, H in SITES] if cuda else [(2, 32, 7)]
    os.environ.pop("FUSED_ATTN_DEBUG_POISON", None)
    names = ["copy"] + [f"{d} {o}" for d in ("fwd", "bwd") for o in ORDERS]
    lines = ["| N×C×H×W | dtype | layout | x (MB) | " + " | ".join(names) + " |",
             "|---|---|---|---:|" + "---:|" * len(names)]
    with restored_env(KEY):
        for N, C, H in grid:
            for dtype in (torch.bfloat16, torch.float32):
                for fmt in (torch.channels_last, torch.contiguous_format):
                    lines.append(site_row(N, C, H, dtype, fmt, args, names))
                    print(lines[-1], flush=True)
    write_ab(args.out, "ab_cbam_order", "CBAM pass order", lines, cuda)


if __name__ == "__main__":
    main()
