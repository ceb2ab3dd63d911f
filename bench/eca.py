"""Efficient Channel Attention on the CPU: fused vs eager PyTorch vs the memory floor.

    python -m bench.eca            # --quick: ResNet-50 ECA sites (k = 5, 5, 5, 7), N=8, fp32, both layouts
    python -m bench.eca --full     # also N=1 and bfloat16

Per row, the median time (with quartiles) of

* ``eager`` — timm's ``EcaModule`` forward op for op (mean, view, conv1d,
  sigmoid, view, expand, multiply),
* ``fused`` — ``fused_attn.efficient_channel_attention`` on the best backend here,
* ``floor`` — ``out.copy_(x)``: one read and one write of x, what any
  out-of-place op over x moves (the 1-D conv on [N, C] is negligible),

for the forward (no_grad) and forward+backward (dx and the conv weight's
gradient), with the fused output's error against the float64 reference.
Timing as in bench/se.py (rounds in turn, rotated inputs). Results:
bench/results/<device>/eca_<mode>.{json,md}.
"""
import math
import os

import torch
import torch.nn.functional as F

import fused_attn

from . import common
from . import se as _se
from .se import environment, measure

# (C, H, k): the ECA sites of ECA-ResNet-50 (k chosen from C as timm does).
RESNET50 = [(256, 56, 5), (512, 28, 5), (1024, 14, 5), (2048, 7, 7)]


def eager_eca(x, w):
    """timm EcaModule.forward, op for op (w: [1, 1, k])."""
    y = x.mean((2, 3)).view(x.shape[0], 1, -1)
    y = F.conv1d(y, w, padding=(w.shape[-1] - 1) // 2)
    y = torch.sigmoid(y).view(x.shape[0], -1, 1, 1)
    return x * y.expand_as(x)


def fused_eca(x, w):
    return fused_attn.efficient_channel_attention(x, w)


def run_case(N, C, H, k, dtype, memory_format, backward):
    g = torch.Generator().manual_seed(0)
    shape = (N, C, H, H)
    x_bytes = math.prod(shape) * torch.finfo(dtype).bits // 8
    n_inputs = max(3, math.ceil(_se.ROTATE_BYTES / x_bytes))
    xs = [torch.randn(*shape, generator=g).to(dtype).to(memory_format=memory_format) for _ in range(n_inputs)]
    w = (torch.randn(1, 1, k, generator=g) * 3 / k).to(dtype)
    with torch.no_grad():
        err = (fused_eca(xs[0], w).double()
               - fused_attn.reference.efficient_channel_attention(xs[0].double(), w.double())).abs().max().item()
    row = {"N": N, "C": C, "H": H, "W": H, "k": k, "dtype": str(dtype).split(".")[-1],
           "layout": "channels_last" if memory_format == torch.channels_last else "nchw",
           "max_abs_err": err, "inputs_rotated": n_inputs}
    if backward:
        n_inputs = max(3, n_inputs // 2)
        xs = xs[:n_inputs]
        dys = [torch.randn(*shape, generator=g).to(dtype).to(memory_format=memory_format) for _ in range(n_inputs)]
        leaf = w.clone().requires_grad_()

        def step(fn):
            def run(i):
                x = xs[i].requires_grad_()
                torch.autograd.grad(fn(x, leaf), [x, leaf], dys[i])
            return run

    outs = [torch.empty_like(x) for x in xs]
    for o in outs:
        o.zero_()  # touch every page before timing
    providers = {"copy": lambda i: outs[i].copy_(xs[i])}
    if backward:
        providers.update(eager=step(eager_eca), fused=step(fused_eca))
        row.update(measure(providers, n_inputs))
    else:
        providers.update(eager=lambda i: eager_eca(xs[i], w), fused=lambda i: fused_eca(xs[i], w))
        with torch.no_grad():
            row.update(measure(providers, n_inputs))
    for x in xs:
        x.requires_grad_(False)
    row["floor_ms"] = row["copy"]["median_ms"]
    row["fused_vs_floor"] = row["fused"]["median_ms"] / row["floor_ms"]
    row["speedup_vs_eager"] = row["eager"]["median_ms"] / row["fused"]["median_ms"]
    return row


def cases(mode):
    if mode == "smoke":
        for backward in (False, True):
            for fmt in (torch.contiguous_format, torch.channels_last):
                yield dict(N=2, C=32, H=6, k=3, dtype=torch.float32, memory_format=fmt, backward=backward)
        return
    batches, dtypes = ([8], [torch.float32]) if mode == "quick" else ([1, 8], [torch.float32, torch.bfloat16])
    for backward in (False, True):
        for dtype in dtypes:
            for N in batches:
                for C, H, k in RESNET50:
                    for fmt in (torch.contiguous_format, torch.channels_last):
                        yield dict(N=N, C=C, H=H, k=k, dtype=dtype, memory_format=fmt, backward=backward)


def markdown(env, rows):
    lines = [f"ECA on {env['cpu']} ({env['threads']} threads), torch {env['torch']}, backend "
             f"`{env['backend']}` ({env['cpu_isa']}), {env['date']}.", "",
             "Times are medians in ms. floor = `out.copy_(x)`.", "",
             "| pass | N×C×H×W | k | dtype | layout | eager | fused | floor | fused/floor | speedup vs eager | max err |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['pass']} | {r['N']}×{r['C']}×{r['H']}×{r['W']} | {r['k']} | {r['dtype']} | {r['layout']} | "
            f"{r['eager']['median_ms']:.3f} | {r['fused']['median_ms']:.3f} | {r['floor_ms']:.3f} | "
            f"{r['fused_vs_floor']:.2f}× | {r['speedup_vs_eager']:.2f}× | {r['max_abs_err']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = common.parser(__doc__).parse_args(argv)
    if args.mode == "smoke":
        _se.use_smoke_settings()
    env = environment()
    print(f"# ECA — {env['cpu']}: {env['threads']} threads, torch {env['torch']}, backend {env['backend']} "
          f"({env['cpu_isa']})")
    print(f"{'pass':<8} {'N×C×H×W':<16} {'k':>2} {'dtype':<9} {'layout':<13} {'eager':>8} {'fused':>8} "
          f"{'floor':>8} {'f/floor':>8} {'speedup':>8} {'max err':>8}")
    rows = []
    all_cases = list(cases(args.mode))
    for n, case in enumerate(all_cases, 1):
        row = run_case(**case)
        row["pass"] = "fwd+bwd" if case["backward"] else "fwd"
        rows.append(row)
        print(f"{row['pass']:<8} {row['N']}×{row['C']}×{row['H']}×{row['W']:<5} {row['k']:>2} {row['dtype']:<9} "
              f"{row['layout']:<13} {row['eager']['median_ms']:8.3f} {row['fused']['median_ms']:8.3f} "
              f"{row['floor_ms']:8.3f} {row['fused_vs_floor']:7.2f}× {row['speedup_vs_eager']:7.2f}× "
              f"{row['max_abs_err']:8.1e}  [{n}/{len(all_cases)}]", flush=True)
    if args.no_save:
        return rows
    path = common.write(args.out or os.path.join(common.RESULTS, common.cpu_folder(env)), f"eca_{args.mode}", env,
                        args.mode, rows, markdown)
    print(f"# wrote {path}.json and .md")
    return rows


if __name__ == "__main__":
    main()
