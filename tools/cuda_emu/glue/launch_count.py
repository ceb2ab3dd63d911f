"""Kernel launches per call of each CUDA op, counted without a GPU: the
emulated glue (glue.py) runs on CPU tensors under the torch profiler, and each
ATen op it runs that would launch a kernel on CUDA (a leaf op: neither a view,
an allocation nor a call that only forwards to another op) counts one, plus
our own kernels from the emulation's trace.

    .venv/bin/python tools/cuda_emu/glue/launch_count.py [--md]

An estimate: ATen's CUDA and CPU kernels are mostly the same ops (one GEMM,
one elementwise kernel per op), but a CPU op may differ (a CUDA reduction in
two stages, a cuBLAS call with a bias copy). The figure that matters, host
time per call on a GPU, is bench.overhead's, on a GPU.
"""
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..", "..")))

import glue  # noqa: E402
from tests.test_cbam import CBAMVariant, _op_args  # noqa: E402
from tests.test_eca import ECAVariant, eca_sample  # noqa: E402
from tests.utils import SEVariant, se_sample  # noqa: E402

# Ops that launch nothing on CUDA: views, allocations, metadata.
FREE = {
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::view", "aten::select", "aten::t",
    "aten::transpose", "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::slice", "aten::alias",
    "aten::as_strided", "aten::permute", "aten::reshape", "aten::_reshape_alias", "aten::detach", "aten::resize_",
    "aten::lift_fresh", "aten::contiguous", "aten::to", "aten::_unsafe_view", "aten::numpy_T", "aten::result_type",
    "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense", "aten::flatten", "aten::view_as",
    "aten::expand_as", "aten::narrow", "aten::unbind", "aten::split", "aten::chunk", "aten::set_",
    "aten::resolve_conj", "aten::resolve_neg",
}
# One launch (a cuBLAS / cuDNN call) whatever the CPU kernel does inside.
ATOMIC = {"aten::mm", "aten::addmm", "aten::bmm", "aten::addmv", "aten::addmv_", "aten::mv", "aten::convolution",
          "aten::_convolution", "aten::conv1d", "aten::conv2d", "aten::sum", "aten::mean", "aten::amax"}


def count(fn):
    """(our kernels, ATen launches, the ATen ops by name) of one call of fn."""
    ops = glue.build()
    ops.trace()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ours = len(ops.trace())  # a cluster launch is one
    events = [e for e in prof.events() if e.name.startswith("aten::")]

    def under_atomic(e):
        p = e.cpu_parent
        while p is not None:
            if p.name in ATOMIC:
                return True
            p = p.cpu_parent
        return False

    wrap_ops = ("aten::_to_copy", "aten::to", "aten::copy_", "aten::empty_strided", "aten::empty")

    def scalar_wrap(e):  # the CPU copy of a Python scalar inside an elementwise op: a kernel argument on CUDA
        if e.name not in wrap_ops:
            return False
        p = e.cpu_parent
        while p is not None and p.name in wrap_ops:
            p = p.cpu_parent
        return p is not None and p.name.startswith("aten::")

    # An event that encloses another aten:: op only dispatched to it, unless it is one call.
    parents = {id(e.cpu_parent) for e in events if e.cpu_parent is not None and not scalar_wrap(e)}
    leaves = [e for e in events if not under_atomic(e) and e.name not in FREE and not scalar_wrap(e)
              and (e.name in ATOMIC or id(e) not in parents)]
    names = {}
    for e in leaves:
        names[e.name] = names.get(e.name, 0) + 1
    return ours, len(leaves), names


def cases():
    E = glue.build()
    x, w1, b1, w2, b2 = se_sample((32, 256, 7, 7), torch.float32, torch.channels_last, SEVariant())
    se_kw = ("relu", "sigmoid", "avg")
    se_out = CPU.se_forward(x, w1, b1, w2, b2, *se_kw)
    dy = torch.randn_like(se_out[0])
    xe, we, be = eca_sample((32, 256, 7, 7), torch.float32, torch.channels_last, ECAVariant(k=5))
    eo = CPU.eca_forward(xe, we, be, "zeros", "sigmoid")
    for path in ("auto", "two_phase"):
        tag = "single launch" if path == "auto" else "two-phase"
        yield f"SE fwd, {tag}", lambda: E.se_forward(x, w1, b1, w2, b2, *se_kw), path
        yield f"SE bwd, {tag}", lambda: E.se_backward(dy, x, w1, w2, *se_out[1:], *se_kw, True, True), path
        yield f"ECA fwd, {tag}", lambda: E.eca_forward(xe, we, be, "zeros", "sigmoid"), path
        yield f"ECA bwd, {tag}", lambda: E.eca_backward(dy, xe, we, *eo[1:], "zeros", "sigmoid", False), path
    for name, v in [("CBAM (timm, train)", CBAMVariant(train=True)), ("CBAM (timm, eval)", CBAMVariant()),
                    ("light CBAM (eval)", CBAMVariant(light=True))]:
        args = _op_args(v, torch.float32, (8, 64, 14, 14), torch.channels_last)
        yield f"{name} fwd", (lambda a=args: E.cbam_forward(*a)), "auto"
        out = CPU.cbam_forward(*args)
        g = torch.randn_like(out[0])
        bargs = (g, *args[:8], *out[1:], args[8] is None, *args[10:])
        yield f"{name} bwd", (lambda b=bargs: E.cbam_backward(*b)), "auto"


CPU = torch.ops.fused_attn


def main():
    md = "--md" in sys.argv
    rows = []
    for name, fn, path in cases():
        os.environ["FUSED_ATTN_CUDA_PATH"] = path
        fn()  # warm: first-call work (the planner's caches) is not per call
        ours, aten, names = count(fn)
        rows.append((name, ours, aten, names))
    if md:
        print("| op | our kernels | ATen launches | total | ATen ops |\n|---|---:|---:|---:|---|")
        for name, ours, aten, names in rows:
            ops = ", ".join(f"{k[6:]}×{v}" if v > 1 else k[6:] for k, v in sorted(names.items()))
            print(f"| {name} | {ours} | {aten} | {ours + aten} | {ops} |")
    else:
        for name, ours, aten, names in rows:
            print(f"{name:28s} ours {ours:2d}  aten {aten:3d}  total {ours + aten:3d}  {dict(sorted(names.items()))}")


if __name__ == "__main__":
    main()
