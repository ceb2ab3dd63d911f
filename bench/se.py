"""Squeeze-and-Excitation: fused vs eager PyTorch vs the memory floor.

    python -m bench.se            # --quick: ResNet-50 SE sites, N=8, fp32, both layouts
    python -m bench.se --full     # also N=1, bf16 and the EfficientNet / MobileNetV3 sites

For every row: the median time (with quartiles) of

* ``eager``  — timm's ``SEModule`` forward written out in eager PyTorch
  (mean, 1×1 conv, act, 1×1 conv, gate, multiply),
* ``fused``  — ``fused_attn.squeeze_excitation`` on the best backend here,
* ``floor``  — ``out.copy_(x)`` (x read once, y written once: what any
  out-of-place op over x must move) plus the excitation's two matmuls on the
  pooled [N, C] alone (at small H·W and large C they are not free on a CPU),

for the forward (no_grad) and for forward+backward (dx and every weight
gradient), and the fused output's error against the float64 reference.

Timing: warm-up, then 7 rounds in which the providers take turns (each at
least 5 runs and 0.15 s per round, so drift in the machine's speed hits them
alike); median and quartiles of all runs. Inputs rotate through enough copies (1 GiB or more) that
large shapes are not cache-warm. Results go to stdout and to
bench/results/<device>/se_<mode>.{json,md}.
"""
import datetime
import math
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import fused_attn

from . import common

ROTATE_BYTES = 1 << 30
# How long each provider is timed (--smoke shortens it: the tests run the
# benchmark code on a tiny grid to check it works, not to time anything).
TIMING = dict(rounds=7, min_reps=5, min_seconds=0.15)

# (C, H, rd, act, gate): the SE sites of the networks people train.
RESNET50 = [(256, 56, 16, "relu", "sigmoid"), (512, 28, 32, "relu", "sigmoid"),
            (1024, 14, 64, "relu", "sigmoid"), (2048, 7, 128, "relu", "sigmoid")]
EFFICIENTNET_B0 = [(32, 112, 8, "silu", "sigmoid"), (96, 56, 4, "silu", "sigmoid"),
                   (144, 56, 6, "silu", "sigmoid"), (240, 28, 10, "silu", "sigmoid"),
                   (480, 14, 20, "silu", "sigmoid"), (672, 14, 28, "silu", "sigmoid"),
                   (1152, 7, 48, "silu", "sigmoid")]
MOBILENETV3 = [(72, 28, 24, "relu", "hard_sigmoid"), (120, 28, 32, "relu", "hard_sigmoid"),
               (480, 14, 120, "relu", "hard_sigmoid"), (672, 14, 168, "relu", "hard_sigmoid"),
               (960, 7, 240, "relu", "hard_sigmoid")]
EAGER_ACT = {"relu": F.relu, "silu": F.silu}
EAGER_GATE = {"sigmoid": torch.sigmoid, "hard_sigmoid": F.hardsigmoid}


def eager_se(x, w1, b1, w2, b2, act, gate):
    """timm SEModule.forward, op for op."""
    s = x.mean((2, 3), keepdim=True)
    s = F.conv2d(s, w1[:, :, None, None], b1)
    s = EAGER_ACT[act](s)
    s = F.conv2d(s, w2[:, :, None, None], b2)
    return x * EAGER_GATE[gate](s)


def measure(providers, n_inputs, *, rounds=None, min_reps=None, min_seconds=None):
    """{name: median and quartiles (ms)} of each fn(i), i rotating over
    range(n_inputs). The providers take turns, a short burst each per round,
    so drift in the machine's speed (other tenants of a VM) hits them alike."""
    rounds = rounds or TIMING["rounds"]
    min_reps = min_reps or TIMING["min_reps"]
    min_seconds = TIMING["min_seconds"] if min_seconds is None else min_seconds
    times = {name: [] for name in providers}
    for fn in providers.values():  # warm-up
        for i in range(min(3, n_inputs)):
            fn(i)
    i = 0
    for _ in range(rounds):
        for name, fn in providers.items():
            start = time.perf_counter()
            reps = 0
            while reps < min_reps or time.perf_counter() - start < min_seconds:
                t0 = time.perf_counter()
                fn(i % n_inputs)
                times[name].append(time.perf_counter() - t0)
                i += 1
                reps += 1
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4, method="inclusive")
        out[name] = {"median_ms": q[1] * 1e3, "q1_ms": q[0] * 1e3, "q3_ms": q[2] * 1e3, "reps": len(ts)}
    return out


def run_case(N, C, H, rd, act, gate, dtype, memory_format, backward):
    g = torch.Generator().manual_seed(0)
    shape = (N, C, H, H)
    x_bytes = math.prod(shape) * torch.finfo(dtype).bits // 8
    n_inputs = max(3, math.ceil(ROTATE_BYTES / x_bytes))

    def rand(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(dtype)

    xs = [rand(*shape).to(memory_format=memory_format) for _ in range(n_inputs)]
    w1, b1 = rand(rd, C, scale=C ** -0.5), rand(rd, scale=0.5)
    w2, b2 = rand(C, rd, scale=rd ** -0.5), rand(C, scale=0.5)
    params = [w1, b1, w2, b2]
    kw = dict(act=act, gate=gate)

    # Error of the fused output against the float64 reference.
    with torch.no_grad():
        y = fused_attn.squeeze_excitation(xs[0], *params, **kw)
        ref = fused_attn.reference.squeeze_excitation(xs[0].double(), *[p.double() for p in params], **kw)
        err = (y.double() - ref).abs().max().item()
    row = {"N": N, "C": C, "H": H, "W": H, "rd": rd, "act": act, "gate": gate, "dtype": str(dtype).split(".")[-1],
           "layout": "channels_last" if memory_format == torch.channels_last else "nchw",
           "max_abs_err": err, "inputs_rotated": n_inputs}

    pooled = rand(N, C)
    w1f, w2f = w1.float(), w2.float()

    def mlp(_):
        F.linear(F.relu(F.linear(pooled.float(), w1f, b1.float())), w2f, b2.float())

    if not backward:
        outs = [torch.empty_like(x) for x in xs]
        for o in outs:
            o.zero_()  # touch every page before timing
        with torch.no_grad():
            row.update(measure({
                "copy": lambda i: outs[i].copy_(xs[i]),
                "mlp": mlp,
                "eager": lambda i: eager_se(xs[i], *params, **kw),
                "fused": lambda i: fused_attn.squeeze_excitation(xs[i], *params, **kw),
            }, n_inputs))
        del outs
    else:
        # forward + backward: dx and every weight gradient. The floor is the
        # same copy as the forward's; the byte model (DESIGN.md §4) puts the
        # fused backward at 3|x| and eager at 5|x| or more.
        n_inputs = max(3, n_inputs // 2)
        xs = xs[:n_inputs]
        dys = [rand(*shape).to(memory_format=memory_format) for _ in range(n_inputs)]
        leaves = [p.clone().requires_grad_() for p in params]

        def step(fn):
            def run(i):
                x = xs[i].requires_grad_()
                y = fn(x, *leaves, **kw)
                torch.autograd.grad(y, [x] + leaves, dys[i])
            return run

        outs = [torch.empty_like(x) for x in xs]
        for o in outs:
            o.zero_()
        row.update(measure({
            "copy": lambda i: outs[i].copy_(xs[i]),
            "mlp": mlp,
            "eager": step(eager_se),
            "fused": step(fused_attn.squeeze_excitation),
        }, n_inputs))
        for x in xs:
            x.requires_grad_(False)
    row["floor_ms"] = row["copy"]["median_ms"] + row["mlp"]["median_ms"]
    row["fused_vs_floor"] = row["fused"]["median_ms"] / row["floor_ms"]
    row["speedup_vs_eager"] = row["eager"]["median_ms"] / row["fused"]["median_ms"]
    return row


def environment():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu", "cpu": cpu, "threads": torch.get_num_threads(), "cores": os.cpu_count(),
        "torch": torch.__version__, "python": platform.python_version(),
        "backend": fused_attn._backends.resolve("cpu"),
        "cpu_isa": fused_attn._extension.CPU_ISA,
    }


def use_smoke_settings():
    """--smoke: a tiny grid, timed briefly, inputs not rotated."""
    global ROTATE_BYTES
    ROTATE_BYTES = 0
    TIMING.update(rounds=1, min_reps=2, min_seconds=0.0)


def cases(mode):
    if mode == "smoke":
        for backward in (False, True):
            for fmt in (torch.contiguous_format, torch.channels_last):
                yield "smoke", dict(N=2, C=32, H=6, rd=8, act="silu", gate="hard_sigmoid", dtype=torch.float32,
                                    memory_format=fmt, backward=backward)
        return
    sites = [("resnet50", s) for s in RESNET50]
    batches, dtypes = [8], [torch.float32]
    if mode == "full":
        sites += [("efficientnet_b0", s) for s in EFFICIENTNET_B0] + [("mobilenetv3", s) for s in MOBILENETV3]
        batches, dtypes = [1, 8], [torch.float32, torch.bfloat16]
    for backward in (False, True):
        for dtype in dtypes:
            for N in batches:
                for net, (C, H, rd, act, gate) in sites:
                    for fmt in (torch.contiguous_format, torch.channels_last):
                        yield net, dict(N=N, C=C, H=H, rd=rd, act=act, gate=gate, dtype=dtype,
                                        memory_format=fmt, backward=backward)


def markdown(env, rows):
    lines = [f"SE on {env['cpu']} ({env['threads']} threads), torch {env['torch']}, backend "
             f"`{env['backend']}` ({env['cpu_isa']}), {env['date']}.", "",
             "Times are medians in ms. floor = `out.copy_(x)` + the excitation's matmuls on [N, C].", "",
             "| pass | net | N×C×H×W | dtype | layout | eager | fused | floor | fused/floor | speedup vs eager | max err |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['pass']} | {r['net']} | {r['N']}×{r['C']}×{r['H']}×{r['W']} | {r['dtype']} | {r['layout']} | "
            f"{r['eager']['median_ms']:.3f} | {r['fused']['median_ms']:.3f} | {r['floor_ms']:.3f} | "
            f"{r['fused_vs_floor']:.2f}× | {r['speedup_vs_eager']:.2f}× | {r['max_abs_err']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = common.parser(__doc__).parse_args(argv)
    if args.mode == "smoke":
        use_smoke_settings()

    env = environment()
    print(f"# {env['cpu']}: {env['threads']} threads, torch {env['torch']}, backend {env['backend']} "
          f"({env['cpu_isa']})")
    for s in fused_attn.backends().values():
        print(f"#   {s}")
    header = (f"{'pass':<8} {'net':<16} {'N×C×H×W':<16} {'dtype':<9} {'layout':<13} {'eager':>8} {'fused':>8} "
              f"{'floor':>8} {'f/floor':>8} {'speedup':>8} {'max err':>8}")
    print(header)
    rows = []
    all_cases = list(cases(args.mode))
    for k, (net, case) in enumerate(all_cases, 1):
        row = run_case(**case)
        row["net"] = net
        row["pass"] = "fwd+bwd" if case["backward"] else "fwd"
        rows.append(row)
        print(f"{row['pass']:<8} {net:<16} {row['N']}×{row['C']}×{row['H']}×{row['W']:<5} {row['dtype']:<9} "
              f"{row['layout']:<13} {row['eager']['median_ms']:8.3f} {row['fused']['median_ms']:8.3f} "
              f"{row['floor_ms']:8.3f} {row['fused_vs_floor']:7.2f}× {row['speedup_vs_eager']:7.2f}× "
              f"{row['max_abs_err']:8.1e}  [{k}/{len(all_cases)}]", flush=True)
    if args.no_save:
        return rows
    path = common.write(args.out or os.path.join(common.RESULTS, common.cpu_folder(env)), f"se_{args.mode}", env,
                        args.mode, rows, markdown)
    print(f"# wrote {path}.json and .md")
    return rows


if __name__ == "__main__":
    main()
