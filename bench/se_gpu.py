"""Squeeze-and-Excitation on a GPU: every fused backend vs eager vs
``torch.compile`` vs a device copy.

    python -m bench.se_gpu            # --quick: ResNet-50 sites, N=32 and 128, fp32/bf16, both layouts; N=1 at 2048×7²
    python -m bench.se_gpu --full     # also the EfficientNet-B0 sites

Providers per row: ``copy`` (``out.copy_(x)``: one read, one write — the
floor of the forward), ``eager`` (timm SEModule op for op), ``compile``
(``torch.compile`` of that, default mode, specialized to the shape as it is
inside a compiled network), and ``cuda`` / ``triton`` (fused_attn forced to
that backend), for the forward (no_grad) and forward+backward (dx and every
weight gradient). The forward+backward floor is 2.5× the copy: 2|x| forward +
3|x| backward (DESIGN.md §4).

Timing: CUDA events around each call, inputs rotated through copies totalling
at least 4× the L2 so nothing is cache-warm, providers take turns in rounds;
medians with quartiles. Each row is written as soon as it is measured
(bench/results/<gpu>/se_gpu_<mode>.json and .md), so an interrupted run keeps
what it measured.
"""
import datetime
import math
import os
import platform
import statistics

import torch

import fused_attn

from . import common
from .se import EFFICIENTNET_B0, RESNET50, eager_se


def measure(providers, n_inputs, *, rounds=5, reps=20):
    """{name: median and quartiles (ms)} of each fn(i) on the GPU, i rotating
    over range(n_inputs); the providers take turns, `reps` calls per round."""
    times = {name: [] for name in providers}
    for fn in providers.values():  # warm-up: compile, autotune, allocator
        for i in range(3):
            fn(i % n_inputs)
    torch.cuda.synchronize()
    i = 0
    for _ in range(rounds):
        for name, fn in providers.items():
            events = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(i % n_inputs)
                end.record()
                events.append((start, end))
                i += 1
            torch.cuda.synchronize()
            times[name].extend(s.elapsed_time(e) for s, e in events)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4, method="inclusive")
        out[name] = {"median_ms": q[1], "q1_ms": q[0], "q3_ms": q[2], "reps": len(ts)}
    return out


def fused_backends():
    return [name for name in ("cuda", "triton") if "cuda" in fused_attn.backends()[name].devices]


def fused(backend):
    def run(*args, **kw):
        with fused_attn.use_backend(backend):
            return fused_attn.squeeze_excitation(*args, **kw)
    return run


def run_case(N, C, H, rd, act, gate, dtype, memory_format, backward, with_compile=True):
    torch.manual_seed(0)
    shape = (N, C, H, H)
    x_bytes = math.prod(shape) * torch.finfo(dtype).bits // 8
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    n_inputs = max(2, math.ceil(4 * l2 / x_bytes))
    dev = "cuda"

    def rand(*size, scale=1.0):
        return (torch.randn(*size, device=dev) * scale).to(dtype)

    xs = [rand(*shape).to(memory_format=memory_format) for _ in range(n_inputs)]
    params = [rand(rd, C, scale=C ** -0.5), rand(rd, scale=0.5), rand(C, rd, scale=rd ** -0.5), rand(C, scale=0.5)]
    kw = dict(act=act, gate=gate)
    backends = fused_backends()
    row = {"N": N, "C": C, "H": H, "W": H, "rd": rd, "act": act, "gate": gate, "dtype": str(dtype).split(".")[-1],
           "layout": "channels_last" if memory_format == torch.channels_last else "nchw", "x_bytes": x_bytes,
           "inputs_rotated": n_inputs, "max_abs_err": {}}
    with torch.no_grad():
        ref = fused_attn.reference.squeeze_excitation(xs[0].double(), *[p.double() for p in params], **kw)
        for b in backends:
            row["max_abs_err"][b] = (fused(b)(xs[0], *params, **kw).double() - ref).abs().max().item()
    impls = {"eager": eager_se}
    if with_compile:
        impls["compile"] = torch.compile(eager_se, dynamic=False)
    impls.update({b: fused(b) for b in backends})

    outs = [torch.empty_like(x) for x in xs]
    providers = {"copy": lambda i: outs[i].copy_(xs[i])}
    if not backward:
        for name, fn in impls.items():
            providers[name] = (lambda fn: lambda i: fn(xs[i], *params, **kw))(fn)
        with torch.no_grad():
            row.update(measure(providers, n_inputs))
        row["floor_ms"] = row["copy"]["median_ms"]
    else:
        dys = [rand(*shape).to(memory_format=memory_format) for _ in range(n_inputs)]
        leaves = [p.clone().requires_grad_() for p in params]
        for x in xs:
            x.requires_grad_()

        def step(fn):
            def run(i):
                y = fn(xs[i], *leaves, **kw)
                torch.autograd.grad(y, [xs[i]] + leaves, dys[i])
            return run

        for name, fn in impls.items():
            providers[name] = step(fn)
        row.update(measure(providers, n_inputs))
        row["floor_ms"] = 2.5 * row["copy"]["median_ms"]
    for b in backends:
        t = row[b]["median_ms"]
        row[f"{b}_vs_floor"] = t / row["floor_ms"]
        row[f"{b}_speedup_vs_eager"] = row["eager"]["median_ms"] / t
        if with_compile:
            row[f"{b}_speedup_vs_compile"] = row["compile"]["median_ms"] / t
    return row


def environment():
    props = torch.cuda.get_device_properties(0)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": "cuda", "gpu": props.name, "sm": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
        "python": platform.python_version(), "fused_backends": fused_backends(),
        "extension_cuda": fused_attn._extension.CUDA_VERSION, "extension_archs": fused_attn._extension.CUDA_ARCHS,
    }


def cases(mode):
    sites = [("resnet50", s) for s in RESNET50]
    if mode == "full":
        sites += [("efficientnet_b0", s) for s in EFFICIENTNET_B0]
    for backward in (False, True):
        for dtype in (torch.bfloat16, torch.float32):
            for fmt in (torch.contiguous_format, torch.channels_last):
                for N in (32, 128):
                    for net, (C, H, rd, act, gate) in sites:
                        yield net, dict(N=N, C=C, H=H, rd=rd, act=act, gate=gate, dtype=dtype,
                                        memory_format=fmt, backward=backward)
                C, H, rd, act, gate = RESNET50[-1]
                yield "resnet50", dict(N=1, C=C, H=H, rd=rd, act=act, gate=gate, dtype=dtype,
                                       memory_format=fmt, backward=backward)


def markdown(env, rows):
    backends = env["fused_backends"]
    cols = " | ".join(f"{b}" for b in backends)
    ratio_cols = " | ".join(f"{b}/floor | {b} vs compile" for b in backends)
    lines = [f"SE on {env['gpu']} (sm {env['sm']}), torch {env['torch']}, CUDA {env['cuda']}, triton {env['triton']}, "
             f"{env['date']}.", "",
             "Medians in ms (CUDA events, inputs rotated past the L2). floor = `out.copy_(x)` (forward) or 2.5× it "
             "(forward+backward).", "",
             f"| pass | net | N×C×H×W | dtype | layout | copy | eager | compile | {cols} | {ratio_cols} |",
             "|---|---|---|---|---|" + "---:|" * (3 + 3 * len(backends))]
    for r in rows:
        comp = r.get("compile", {}).get("median_ms", float("nan"))
        times = " | ".join(f"{r[b]['median_ms']:.4f}" for b in backends)
        ratios = " | ".join(f"{r[f'{b}_vs_floor']:.2f}× | {r.get(f'{b}_speedup_vs_compile', float('nan')):.2f}×"
                            for b in backends)
        lines.append(f"| {r['pass']} | {r['net']} | {r['N']}×{r['C']}×{r['H']}×{r['W']} | {r['dtype']} | "
                     f"{r['layout']} | {r['copy']['median_ms']:.4f} | {r['eager']['median_ms']:.4f} | {comp:.4f} | "
                     f"{times} | {ratios} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = common.parser(__doc__, smoke=False)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench.se_gpu needs a CUDA device (python -m bench.se measures the CPU)")
    torch._dynamo.config.cache_size_limit = 1024

    env = environment()
    out = args.out or os.path.join(common.RESULTS, common.slug(env["gpu"]))
    print(f"# {env['gpu']} (sm {env['sm']}), torch {env['torch']}, CUDA {env['cuda']}, triton {env['triton']}")
    for s in fused_attn.backends().values():
        print(f"#   {s}")
    rows = []
    all_cases = list(cases(args.mode))
    for k, (net, case) in enumerate(all_cases, 1):
        row = run_case(**case, with_compile=not args.no_compile)
        row["net"] = net
        row["pass"] = "fwd+bwd" if case["backward"] else "fwd"
        rows.append(row)
        parts = [f"{name} {row[name]['median_ms']:.4f}" for name in ("copy", "eager", "compile", "cuda", "triton")
                 if name in row]
        ratios = [f"{b}/floor {row[f'{b}_vs_floor']:.2f}x" for b in env["fused_backends"]]
        print(f"{row['pass']:<8} {net:<16} {row['N']}x{row['C']}x{row['H']}x{row['W']} {row['dtype']:<9} "
              f"{row['layout']:<13} " + "  ".join(parts + ratios) + f"  [{k}/{len(all_cases)}]", flush=True)
        if not args.no_save:
            path = common.write(out, f"se_gpu_{args.mode}", env, args.mode, rows, markdown)
    if not args.no_save:
        print(f"# wrote {path}.json and .md")
    return rows


if __name__ == "__main__":
    main()
