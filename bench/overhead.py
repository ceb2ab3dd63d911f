"""The fixed cost of a call: host time per call where the tensors are tiny,
layer by layer, and the excitation's share at the small ResNet-50 sites.

    python -m bench.overhead               # CPU (default) or --device cuda
    python -m bench.overhead --no-save

Part 1, per op (SE, ECA, CBAM) on x of 1×16×4×4 (the kernels do next to no
work): median wall time per call of

* ``eager``      the timm module,
* ``module``     the fused module (``from_module`` of it): Python module,
  argument checks, backend choice, the op,
* ``functional`` ``fused_attn.squeeze_excitation`` / ... with the module's
  weights (no module),
* ``op``         the registered op through ``torch.ops`` (dispatcher, C++
  autograd, the kernels),

under ``no_grad`` and with gradients enabled (the op then records its
autograd node and saves what the backward needs). On a GPU each call is
timed to its end (a synchronize after it): the host's work, the launches'
latency and the (tiny) kernels.

Part 2, CPU only: CBAM's op at N=8, C=2048 with H·W = 7×7 against the same
op at H·W = 1×1 (no big-tensor work to speak of: the MLP's products, the
gates, the fixed cost), with x rotated through copies (from DRAM) and the
MLP's weights either the same tensors every call (cached) or rotated too
(from DRAM, as in a network, where every other layer evicts them); beside a
copy of x. It shows what the small sites' forward spends beyond the passes
over x.

Results: bench/results/<device>/overhead.{json,md}.
"""
import os
import statistics
import time

import torch

import fused_attn

from . import common


def _timeit(fn, *, reps, rounds=5, sync=None):
    """Median and quartiles (µs) of fn()'s wall time over rounds × reps calls."""
    per_call = []
    for _ in range(rounds):
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            per_call.append(time.perf_counter() - t0)
    q = statistics.quantiles(per_call, n=4, method="inclusive")
    return {"median_us": q[1] * 1e6, "q1_us": q[0] * 1e6, "q3_us": q[2] * 1e6, "calls": len(per_call)}


def _blocks(device):
    """(name, eager timm module, fused module, functional call, raw op call) per op."""
    from timm.layers.cbam import CbamModule
    from timm.layers.eca import EcaModule
    from timm.layers.squeeze_excite import SEModule

    torch.manual_seed(0)
    out = []
    for name, eager in (("se", SEModule(16, rd_channels=4)), ("eca", EcaModule(16, kernel_size=3)),
                        ("cbam", CbamModule(16, rd_ratio=1 / 4))):
        eager = eager.to(device).eval()
        fused, _ = fused_attn.convert(eager, inplace=False)
        out.append((name, eager, fused))
    return out


def _functional_and_op(name, fused, x):
    """fused_attn.<op>(...) and torch.ops.fused_attn.<op>_forward(...) with the fused module's weights."""
    if name == "se":
        fc1, fc2 = fused.part("fc1"), fused.part("fc2")
        w1, w2 = fc1.weight.flatten(1), fc2.weight.flatten(1)
        return (lambda: fused_attn.squeeze_excitation(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias),
                lambda: torch.ops.fused_attn.se_forward(x, w1, fc1.bias, w2, fc2.bias, "relu", "sigmoid", "avg"))
    if name == "eca":
        w = fused.conv.weight
        wf = w.flatten()
        return (lambda: fused_attn.efficient_channel_attention(x, w),
                lambda: torch.ops.fused_attn.eca_forward(x, wf, None, "zeros", "sigmoid"))
    fc1, fc2, conv, bn = (fused.part(r) for r in ("fc1", "fc2", "conv", "bn"))
    w1, w2, ws = fc1.weight.flatten(1), fc2.weight.flatten(1), conv.weight[0]
    return (lambda: fused_attn.cbam(x, fc1.weight, None, fc2.weight, None, conv.weight, bn_weight=bn.weight,
                                    bn_bias=bn.bias, bn_running_mean=bn.running_mean,
                                    bn_running_var=bn.running_var),
            lambda: torch.ops.fused_attn.cbam_forward(x, w1, None, w2, None, ws, bn.weight, bn.bias,
                                                      bn.running_mean, bn.running_var, bn.eps, "relu", "sigmoid",
                                                      False, False))


def per_call(device, reps):
    sync = torch.cuda.synchronize if device == "cuda" else None
    rows = []
    x = torch.randn(1, 16, 4, 4, device=device)
    for name, eager, fused in _blocks(device):
        functional, op = _functional_and_op(name, fused, x)
        providers = {"eager": lambda: eager(x), "module": lambda: fused(x), "functional": functional, "op": op}
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                row = {"op": name, "grad": grad, "x": list(x.shape), "times": {}}
                for p, fn in providers.items():
                    for _ in range(20):
                        fn()
                    row["times"][p] = _timeit(fn, reps=reps, sync=sync)
                rows.append(row)
    return rows


def excitation_share(reps):
    """CBAM's op at N=8, C=2048: 7×7 vs 1×1, weights cached or rotated, beside a copy of x."""
    torch.manual_seed(0)
    N, C, rd = 8, 2048, 128
    n_rot = 64
    w1s = [torch.randn(rd, C) * C ** -0.5 for _ in range(n_rot)]
    w2s = [torch.randn(C, rd) * rd ** -0.5 for _ in range(n_rot)]
    ws = torch.randn(2, 7, 7) * 0.05
    bn = [torch.ones(1), torch.zeros(1), torch.zeros(1), torch.ones(1)]
    rows = []
    for hw in (7, 1):
        xs = [torch.randn(N, C, hw, hw) for _ in range(n_rot)]
        outs = [torch.empty_like(x) for x in xs]
        state = {"i": 0}

        def nxt():
            state["i"] = (state["i"] + 1) % n_rot
            return state["i"]

        def op(x, w1, w2):
            return torch.ops.fused_attn.cbam_forward(x, w1, None, w2, None, ws, *bn, 1e-5, "relu", "sigmoid",
                                                     False, False)

        def copy():
            i = nxt()
            outs[i].copy_(xs[i])

        def cached():
            op(xs[nxt()], w1s[0], w2s[0])

        def rotated():
            i = nxt()
            op(xs[i], w1s[i], w2s[i])

        with torch.no_grad():
            for label, fn in (("copy of x", copy), ("op, weights cached", cached), ("op, weights from DRAM", rotated)):
                for _ in range(10):
                    fn()
                rows.append({"H": hw, "W": hw, "N": N, "C": C, "rd": rd, "case": label, **_timeit(fn, reps=reps)})
    return rows


def markdown(env, data):
    lines = [f"# bench.overhead on {env['cpu'] if env['device'] == 'cpu' else env.get('gpu')} "
             f"({env['threads']} threads), torch {env['torch']}, timm {common.package_version('timm')}, "
             f"{env['date']}", "",
             "Per call, x of 1×16×4×4: median µs (quartiles). eager: the timm module; module: the fused module; "
             "functional: `fused_attn.<op>(...)`; op: `torch.ops.fused_attn.<op>_forward` (dispatcher, C++ "
             "autograd, kernels).", "",
             "| op | grad | eager | module | functional | op |", "|---|---|---:|---:|---:|---:|"]
    for r in data["per_call"]:
        t = r["times"]
        cells = [f"{t[p]['median_us']:.1f} ({t[p]['q1_us']:.1f}–{t[p]['q3_us']:.1f})"
                 for p in ("eager", "module", "functional", "op")]
        lines.append(f"| {r['op']} | {'on' if r['grad'] else 'no_grad'} | " + " | ".join(cells) + " |")
    if data.get("excitation"):
        lines += ["", "CBAM's op (`torch.ops.fused_attn.cbam_forward`, no_grad), N=8, C=2048, rd=128, x rotated "
                  "through 64 copies: median µs (quartiles). At 1×1 the passes over x cost next to nothing: what "
                  "is left is the MLP's products, the gates and the fixed cost.", "",
                  "| H×W | case | µs |", "|---|---|---:|"]
        for r in data["excitation"]:
            lines.append(f"| {r['H']}×{r['W']} | {r['case']} | {r['median_us']:.0f} "
                         f"({r['q1_us']:.0f}–{r['q3_us']:.0f}) |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = common.parser(__doc__)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    env = common.environment(args.device)
    smoke = args.mode == "smoke"
    reps = 20 if smoke else 400
    data = {"per_call": per_call(args.device, reps)}
    if args.device == "cpu" and fused_attn.HAS_C:
        data["excitation"] = [] if smoke else excitation_share(60)
    text = markdown(env, data)
    print(text)
    if not args.no_save:
        out = args.out or os.path.join(common.RESULTS, common.slug(env["gpu"]) if args.device == "cuda"
                                       else common.cpu_folder(env))
        path = common.write(out, "overhead", env, args.mode, data, lambda e, d: text)
        print(f"# wrote {path}.json and .md")
    return data


if __name__ == "__main__":
    main()
