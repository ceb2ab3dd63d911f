"""The CUDA backend's glue and kernels, emulated on the CPU (glue.py), against
the C++ CPU backend: every forward output (y and what the backward saves) and,
each backend from its own forward, every gradient; both CUDA paths for SE and
ECA (the single launch on an emulated sm_90, and two phases), the planner on
the emulated devices, and the glue's refusals and empty inputs.

    .venv/bin/python -m pytest tools/cuda_emu/glue/test_glue.py      (make cuda-emu-glue)
"""
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..", "..")))

import glue  # noqa: E402
import launch_count  # noqa: E402
from tests import test_cbam as cbam_tests  # noqa: E402
from tests import test_eca as eca_tests  # noqa: E402
from tests import utils as se_utils  # noqa: E402
from tests.test_cbam import CBAMVariant, _op_args  # noqa: E402
from tests.test_eca import ECAVariant, eca_sample  # noqa: E402
from tests.utils import SEVariant, assert_close, misaligned_copy, se_sample  # noqa: E402

EMU = glue.build()
CPU = torch.ops.fused_attn
FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16, "f64": torch.float64}


@pytest.fixture(autouse=True)
def emulated_device():
    EMU.set_device(0)  # an H100
    yield
    EMU.set_device(0)


@pytest.fixture(params=["auto", "two_phase"])
def cuda_path(request, monkeypatch):
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", request.param)
    return request.param


def grad_like(y):
    """A random gradient (never zeros) in y's dtype and layout."""
    torch.manual_seed(7)
    return torch.randn_like(y)


def check_outputs(emu, cpu, dtype, grad=False):
    assert len(emu) == len(cpu)
    for i, (e, c) in enumerate(zip(emu, cpu, strict=True)):
        assert e.shape == c.shape and e.dtype == c.dtype, (i, e.shape, c.shape, e.dtype, c.dtype)
        if i == 0 and e.dim() == 4:
            assert e.stride() == c.stride(), (e.stride(), c.stride())
        assert_close(e, c, dtype, grad=grad)


# ---- SE ---------------------------------------------------------------------
SE_CASES = [
    ((2, 24, 5, 6), "f32", "nchw", SEVariant()),
    ((3, 64, 7, 7), "bf16", "cl", SEVariant(act="silu")),
    ((2, 32, 4, 4), "f16", "nchw", SEVariant(gate="hard_sigmoid", pool="avgmax", bias=False)),
    ((1, 130, 3, 3), "f32", "cl", SEVariant(act="gelu_tanh", pool="avgmax")),
    ((2, 48, 6, 5), "f64", "nchw", SEVariant(act="hard_swish")),
    ((2, 40, 5, 5), "f32", "nchw", SEVariant(effective=True, gate="hard_sigmoid")),
    ((3, 16, 1, 1), "bf16", "nchw", SEVariant(effective=True, pool="avgmax", bias=False)),
]


@pytest.mark.parametrize("shape,dt,fmt,variant", SE_CASES, ids=[f"{s}-{d}-{f}-{v}" for s, d, f, v in SE_CASES])
def test_se(cuda_path, shape, dt, fmt, variant):
    dtype = DTYPES[dt]
    x, w1, b1, w2, b2 = se_sample(shape, dtype, FORMATS[fmt], variant, seed=sum(shape))
    kw = (variant.act, variant.gate, variant.pool)
    emu = EMU.se_forward(x, w1, b1, w2, b2, *kw)
    cpu = CPU.se_forward(x, w1, b1, w2, b2, *kw)
    check_outputs(emu, cpu, dtype)
    dy = grad_like(cpu[0])
    flags = (b1 is not None, b2 is not None)
    ge = EMU.se_backward(dy, x, w1, w2, *emu[1:], *kw, *flags)
    gc = CPU.se_backward(dy, x, w1, w2, *cpu[1:], *kw, *flags)
    check_outputs(ge, gc, dtype, grad=True)


# ---- ECA --------------------------------------------------------------------
ECA_CASES = [
    ((2, 24, 5, 6), "f32", "nchw", ECAVariant()),
    ((2, 64, 7, 7), "bf16", "cl", ECAVariant(k=5)),
    ((1, 3, 4, 4), "f32", "nchw", ECAVariant(k=7, padding="circular")),
    ((2, 37, 3, 5), "f16", "cl", ECAVariant(k=9, padding="circular", bias=True, gate="hard_sigmoid")),
    ((3, 8, 1, 1), "f64", "nchw", ECAVariant(k=1, gate="hard_sigmoid", bias=True)),
]


@pytest.mark.parametrize("shape,dt,fmt,variant", ECA_CASES, ids=[f"{s}-{d}-{f}-{v}" for s, d, f, v in ECA_CASES])
def test_eca(cuda_path, shape, dt, fmt, variant):
    dtype = DTYPES[dt]
    x, w, b = eca_sample(shape, dtype, FORMATS[fmt], variant, seed=sum(shape))
    emu = EMU.eca_forward(x, w, b, variant.padding, variant.gate)
    cpu = CPU.eca_forward(x, w, b, variant.padding, variant.gate)
    check_outputs(emu, cpu, dtype)
    dy = grad_like(cpu[0])
    ge = EMU.eca_backward(dy, x, w, *emu[1:], variant.padding, variant.gate, b is not None)
    gc = CPU.eca_backward(dy, x, w, *cpu[1:], variant.padding, variant.gate, b is not None)
    check_outputs(ge, gc, dtype, grad=True)


# ---- CBAM -------------------------------------------------------------------
CBAM_CASES = [
    ((2, 16, 6, 7), "f32", "nchw", CBAMVariant()),
    ((2, 16, 6, 7), "f32", "cl", CBAMVariant(train=True)),
    ((2, 24, 5, 5), "bf16", "nchw", CBAMVariant(pool_order="max_mean", bias=True, train=True)),
    ((1, 32, 7, 7), "f16", "cl", CBAMVariant(light=True, bias=True)),
    ((3, 8, 4, 6), "f32", "nchw", CBAMVariant(light=True, k=3, train=True)),
    ((2, 37, 5, 4), "f64", "cl", CBAMVariant(k=3, act="silu", gate="hard_sigmoid", affine=False)),
    ((2, 12, 3, 3), "f32", "nchw", CBAMVariant(k=1, act="gelu", pool_order="max_mean", affine=False, train=True)),
    ((1, 130, 2, 3), "bf16", "cl", CBAMVariant(train=True, gate="hard_sigmoid")),
]


def cbam_backward_args(fwd_args, out, dy, variant):
    x, w1, b1, w2, b2, ws, bn_w, bn_b, rm, rv, eps, act, gate, light, max_first = fwd_args
    _, pooled, logits, smap, z, stats = out
    return (dy, x, w1, b1, w2, b2, ws, bn_w, bn_b, pooled, logits, smap, z, stats, rm is None, eps, act, gate,
            light, max_first)


@pytest.mark.parametrize("shape,dt,fmt,variant", CBAM_CASES,
                         ids=[f"{s}-{d}-{f}-{v}" for s, d, f, v in CBAM_CASES])
def test_cbam(shape, dt, fmt, variant):
    dtype = DTYPES[dt]
    args = _op_args(variant, dtype, shape, FORMATS[fmt])
    emu = EMU.cbam_forward(*args)
    cpu = CPU.cbam_forward(*args)
    check_outputs(emu, cpu, dtype)
    dy = grad_like(cpu[0])
    ge = EMU.cbam_backward(*cbam_backward_args(args, emu, dy, variant))
    gc = CPU.cbam_backward(*cbam_backward_args(args, cpu, dy, variant))
    check_outputs(ge, gc, dtype, grad=True)


RUNNING_DTYPES = {"f32": (torch.float32,) * 2, "f64": (torch.float64,) * 2, "f16": (torch.float16,) * 2,
                  "bf16": (torch.bfloat16,) * 2, "mixed": (torch.float32, torch.float64)}


@pytest.mark.parametrize("running", RUNNING_DTYPES)
def test_cbam_running_buffers(running):
    """Eval mode reads the BatchNorm's running buffers in place, in their own
    dtype (mixed dtypes go through double), each a view at an offset into a
    bigger buffer: the same y, saved statistics and gradients as the CPU
    backend's."""
    variant = CBAMVariant(act="silu")
    args = list(_op_args(variant, torch.bfloat16, (2, 20, 6, 5), torch.channels_last))
    for i, dt in zip((8, 9), RUNNING_DTYPES[running], strict=True):
        store = torch.full((3,), float("nan"), dtype=dt)
        store[1] = args[i].reshape(())
        args[i] = store[1:2]
    emu = EMU.cbam_forward(*args)
    cpu = CPU.cbam_forward(*args)
    check_outputs(emu, cpu, torch.bfloat16)
    dy = grad_like(cpu[0])
    ge = EMU.cbam_backward(*cbam_backward_args(args, emu, dy, variant))
    gc = CPU.cbam_backward(*cbam_backward_args(args, cpu, dy, variant))
    check_outputs(ge, gc, torch.bfloat16, grad=True)


# ---- the order of the passes (FUSED_ATTN_CUDA_ORDER) ---------------------------
# A pass over x (dy) that follows another walks it the other way (channel_gate.h,
# alternate_order): CBAM's second pass each way from the last sample back,
# whichever kernel it takes (rows or columns, segments or not, one or eight
# warps per row); SE's and ECA's two-phase elementwise passes from the last
# element back.
ORDER_CASES = [
    ((4, 16, 6, 7), "f32", "nchw", CBAMVariant()),                # channel pool by columns, channel reduce by rows
    ((4, 16, 6, 7), "bf16", "cl", CBAMVariant(train=True)),       # the other way round
    ((3, 512, 3, 3), "f32", "nchw", CBAMVariant(light=True)),     # the channel pool in segments
    ((3, 40, 12, 12), "f16", "cl", CBAMVariant(train=True)),      # the channel reduce in segments
    ((2, 1024, 2, 2), "f32", "cl", CBAMVariant(k=3)),             # eight warps per row (channel pool)
    ((2, 8, 32, 33), "f32", "nchw", CBAMVariant(k=3, train=True)),  # eight warps per row (channel reduce)
]
CBAM_ALTERNATE = ("up", "down", "up")  # per direction: the launches that read x, in order
TWO_PHASE_ALTERNATE = ("up", "down")   # the reduction, then the elementwise pass (forward: x; backward: dy)
ORDERS = ("forward", "alternate", None)  # None: unset, the default


def _directions(reads, n):
    """Per launch that read the watched tensor: 'up' (samples first read 0, 1, ...), 'down' (n-1, ...)
    or the order itself."""
    out = []
    for line in reads:
        order = [int(v) for v in line.split(":", 1)[1].split()]
        out.append("up" if order == list(range(n)) else "down" if order == list(range(n))[::-1] else str(order))
    return tuple(out)


def _run_watched(monkeypatch, order, watched, fn):
    """fn() under FUSED_ATTN_CUDA_ORDER=order (None: unset), with watched's samples' first reads per
    launch; outputs and workspaces poisoned (FUSED_ATTN_DEBUG_POISON), so an output a pass leaves
    unwritten cannot pass for the other order's through a reused allocation."""
    monkeypatch.setenv("FUSED_ATTN_DEBUG_POISON", "1")
    if order is None:
        monkeypatch.delenv("FUSED_ATTN_CUDA_ORDER", raising=False)
    else:
        monkeypatch.setenv("FUSED_ATTN_CUDA_ORDER", order)
    EMU.watch(watched, watched.shape[0])
    try:
        out = fn()
        return out, _directions(EMU.reads(), watched.shape[0])
    finally:
        EMU.unwatch()


def _same_bits(results):
    for order in ORDERS[1:]:
        for i, (a, b) in enumerate(zip(results["forward"], results[order], strict=True)):
            assert torch.equal(a, b), (order, i)


@pytest.mark.parametrize("shape,dt,fmt,variant", ORDER_CASES,
                         ids=[f"{s}-{d}-{f}-{v}" for s, d, f, v in ORDER_CASES])
def test_cbam_pass_order(shape, dt, fmt, variant, monkeypatch):
    """The forward's channel pool and the backward's channel reduce read x
    from the last sample back (FUSED_ATTN_CUDA_ORDER=alternate, the default),
    every other pass from the first on, and with =forward every pass from the
    first: with the same bits in every output and gradient either way."""
    dtype = DTYPES[dt]
    args = _op_args(variant, dtype, shape, FORMATS[fmt])
    dy = grad_like(args[0])
    results = {}
    for order in ORDERS:
        want = ("up",) * 3 if order == "forward" else CBAM_ALTERNATE
        out, fwd = _run_watched(monkeypatch, order, args[0], lambda: EMU.cbam_forward(*args))
        grads, bwd = _run_watched(monkeypatch, order, args[0],
                                  lambda: EMU.cbam_backward(*cbam_backward_args(args, out, dy, variant)))
        assert (fwd, bwd) == (want, want), order
        results[order] = [t for t in (*out, *grads) if t.numel()]
    _same_bits(results)


TWO_PHASE_ORDER_CASES = [
    ("se", (3, 24, 5, 6), "f32", "nchw", SEVariant()),
    ("se", (3, 64, 7, 7), "bf16", "cl", SEVariant(pool="avgmax")),
    ("eca", (3, 40, 6, 5), "f16", "cl", ECAVariant(k=5)),
    ("eca", (4, 16, 3, 3), "f32", "nchw", ECAVariant(k=3, padding="circular")),
]


@pytest.mark.parametrize("op,shape,dt,fmt,variant", TWO_PHASE_ORDER_CASES,
                         ids=[f"{o}-{s}-{d}-{f}-{v}" for o, s, d, f, v in TWO_PHASE_ORDER_CASES])
def test_two_phase_pass_order(op, shape, dt, fmt, variant, monkeypatch):
    """SE's and ECA's two-phase paths: the reduction reads from the first
    sample on, the elementwise pass after it (the rescale; dx) from the last
    back (=forward: both from the first), with the same bits either way."""
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "two_phase")
    dtype = DTYPES[dt]
    if op == "se":
        x, w1, b1, w2, b2 = se_sample(shape, dtype, FORMATS[fmt], variant, seed=sum(shape))
        kw = (variant.act, variant.gate, variant.pool)
        forward = lambda: EMU.se_forward(x, w1, b1, w2, b2, *kw)  # noqa: E731
        backward = lambda out: EMU.se_backward(dy, x, w1, w2, *out[1:], *kw, b1 is not None,  # noqa: E731
                                               b2 is not None)
    else:
        x, w, b = eca_sample(shape, dtype, FORMATS[fmt], variant, seed=sum(shape))
        forward = lambda: EMU.eca_forward(x, w, b, variant.padding, variant.gate)  # noqa: E731
        backward = lambda out: EMU.eca_backward(dy, x, w, *out[1:], variant.padding, variant.gate,  # noqa: E731
                                                b is not None)
    dy = grad_like(x)
    results = {}
    for order in ORDERS:
        want = ("up", "up") if order == "forward" else TWO_PHASE_ALTERNATE
        out, fwd = _run_watched(monkeypatch, order, x, forward)
        grads, bwd = _run_watched(monkeypatch, order, dy, lambda: backward(out))
        assert (fwd, bwd) == (want, want), order
        results[order] = [t for t in (*out, *grads) if t.numel()]
    _same_bits(results)


@pytest.mark.parametrize("op", ["se", "cbam"])
def test_pass_order_refuses_unknown_names(op, monkeypatch):
    monkeypatch.setenv("FUSED_ATTN_CUDA_ORDER", "backward")
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "two_phase")
    with pytest.raises(ValueError, match="FUSED_ATTN_CUDA_ORDER must be alternate or forward"):
        if op == "cbam":
            EMU.cbam_forward(*_op_args(CBAMVariant()))
        else:
            x, w1, b1, w2, b2 = se_sample((2, 16, 4, 4), torch.float32, torch.contiguous_format, SEVariant())
            EMU.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid", "avg")


# ---- the suite's own matrices ------------------------------------------------
# Every (variant, shape) of the CPU suite's SE, ECA and CBAM matrices, with a
# dtype, layout, CUDA path and an aligned, misaligned or strided x chosen in
# rotation; FUSED_ATTN_EMU_GLUE_FULL=1 takes every dtype × layout × x kind
# (~10x the cases, tens of minutes).
FULL = os.environ.get("FUSED_ATTN_EMU_GLUE_FULL") == "1"
X_KINDS = ("aligned", "misaligned", "strided")


def _matrix(variants, shapes):
    import itertools
    combos = []
    for i, (v, shape) in enumerate(itertools.product(variants, shapes)):
        picks = (itertools.product(DTYPES, FORMATS, X_KINDS) if FULL else
                 [(list(DTYPES)[i % 4], list(FORMATS)[(i // 4) % 2], X_KINDS[i % 3])])
        combos += [(v, shape, dt, fmt, xk) for dt, fmt, xk in picks]
    return combos


def _x_kind(x, kind):
    if kind == "misaligned":
        return misaligned_copy(x)
    if kind == "strided":  # neither NCHW- nor channels_last-contiguous: every other column of a wider x
        wide = torch.cat([x, x.flip(-1)], dim=-1)
        return wide[..., ::2]
    return x


def _mid(c):
    v, shape, dt, fmt, xk = c
    return f"{v}-{shape}-{dt}-{fmt}-{xk}"


SE_MATRIX = _matrix(se_utils.VARIANTS, se_utils.SHAPES)
ECA_MATRIX = _matrix(eca_tests.VARIANTS, eca_tests.SHAPES)
CBAM_MATRIX = _matrix(cbam_tests.VARIANTS, [s for s in cbam_tests.SHAPES])


@pytest.mark.parametrize("case", SE_MATRIX, ids=[_mid(c) for c in SE_MATRIX])
def test_se_matrix(case, monkeypatch):
    v, shape, dt, fmt, xk = case
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "two_phase" if sum(shape) % 2 else "auto")
    dtype = DTYPES[dt]
    x, w1, b1, w2, b2 = se_sample(shape, dtype, FORMATS[fmt], v, seed=sum(shape))
    x = _x_kind(x, xk)
    kw = (v.act, v.gate, v.pool)
    emu, cpu = EMU.se_forward(x, w1, b1, w2, b2, *kw), CPU.se_forward(x, w1, b1, w2, b2, *kw)
    check_outputs(emu, cpu, dtype)
    dy = _x_kind(grad_like(cpu[0]), xk)
    flags = (b1 is not None, b2 is not None)
    check_outputs(EMU.se_backward(dy, x, w1, w2, *emu[1:], *kw, *flags),
                  CPU.se_backward(dy, x, w1, w2, *cpu[1:], *kw, *flags), dtype, grad=True)


@pytest.mark.parametrize("case", ECA_MATRIX, ids=[_mid(c) for c in ECA_MATRIX])
def test_eca_matrix(case, monkeypatch):
    v, shape, dt, fmt, xk = case
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "two_phase" if sum(shape) % 2 else "auto")
    dtype = DTYPES[dt]
    x, w, b = eca_sample(shape, dtype, FORMATS[fmt], v, seed=sum(shape))
    x = _x_kind(x, xk)
    emu, cpu = EMU.eca_forward(x, w, b, v.padding, v.gate), CPU.eca_forward(x, w, b, v.padding, v.gate)
    check_outputs(emu, cpu, dtype)
    dy = _x_kind(grad_like(cpu[0]), xk)
    check_outputs(EMU.eca_backward(dy, x, w, *emu[1:], v.padding, v.gate, b is not None),
                  CPU.eca_backward(dy, x, w, *cpu[1:], v.padding, v.gate, b is not None), dtype, grad=True)


@pytest.mark.parametrize("case", CBAM_MATRIX, ids=[_mid(c) for c in CBAM_MATRIX])
def test_cbam_matrix(case):
    v, shape, dt, fmt, xk = case
    if v.train and shape[2] * shape[3] * shape[0] == 1:
        pytest.skip("batch statistics of one value")
    dtype = DTYPES[dt]
    args = _op_args(v, dtype, shape, FORMATS[fmt])
    args = (_x_kind(args[0], xk), *args[1:])
    emu, cpu = EMU.cbam_forward(*args), CPU.cbam_forward(*args)
    check_outputs(emu, cpu, dtype)
    dy = _x_kind(grad_like(cpu[0]), xk)
    check_outputs(EMU.cbam_backward(*cbam_backward_args(args, emu, dy, v)),
                  CPU.cbam_backward(*cbam_backward_args(args, cpu, dy, v)), dtype, grad=True)


# ---- what the glue launches ------------------------------------------------
@pytest.mark.parametrize("fmt", ["nchw", "cl"])
@pytest.mark.parametrize("dt", ["bf16", "f32"])
def test_se_and_eca_at_2048x7x7_n1_are_one_launch_per_direction(dt, fmt, monkeypatch):
    """Issue 3's N = 1 site: the emulated H100's plan is the single launch, both
    ways, and the glue launches nothing else (no ATen op that would be a kernel)."""
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "auto")
    x, w1, b1, w2, b2 = se_sample((1, 2048, 7, 7), DTYPES[dt], FORMATS[fmt])
    kw = ("relu", "sigmoid", "avg")
    out = EMU.se_forward(x, w1, b1, w2, b2, *kw)
    xe, w, b = eca_sample((1, 2048, 7, 7), DTYPES[dt], FORMATS[fmt], ECAVariant(k=7))
    eo = EMU.eca_forward(xe, w, b, "zeros", "sigmoid")
    dy, dye = grad_like(out[0]), grad_like(eo[0])
    calls = {
        "se fwd": lambda: EMU.se_forward(x, w1, b1, w2, b2, *kw),
        "se bwd": lambda: EMU.se_backward(dy, x, w1, w2, *out[1:], *kw, True, True),
        "eca fwd": lambda: EMU.eca_forward(xe, w, b, "zeros", "sigmoid"),
        "eca bwd": lambda: EMU.eca_backward(dye, xe, w, *eo[1:], "zeros", "sigmoid", False),
    }
    for name, fn in calls.items():
        EMU.trace()
        fn()
        assert EMU.trace() == ["cudaLaunchKernelEx"], name
        ours, aten, ops = launch_count.count(fn)
        assert (ours, aten) == (1, 0), (name, ops)


@pytest.mark.parametrize("dt", ["bf16", "f32"])
def test_single_launch_backward_sums_its_groups_in_one_launch(dt, monkeypatch):
    """With more than one group of samples the single-launch backward writes
    float partials of each weight gradient; one launch of ours sums them over
    the groups and writes them in the weights' dtype (it was a sum, and in
    bfloat16 a conversion, per gradient). SE with both biases (four
    gradients) and ECA with a bias (two), against the CPU backend."""
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "fused")
    dtype = DTYPES[dt]
    x, w1, b1, w2, b2 = se_sample((32, 256, 7, 7), dtype, torch.channels_last)
    kw = ("relu", "sigmoid", "avg")
    out, cpu = EMU.se_forward(x, w1, b1, w2, b2, *kw), CPU.se_forward(x, w1, b1, w2, b2, *kw)
    dy = grad_like(cpu[0])
    xe, w, b = eca_sample((32, 256, 7, 7), dtype, torch.channels_last, ECAVariant(k=5, bias=True))
    eo, ec = EMU.eca_forward(xe, w, b, "circular", "sigmoid"), CPU.eca_forward(xe, w, b, "circular", "sigmoid")
    dye = grad_like(ec[0])
    calls = {
        "se": (lambda: EMU.se_backward(dy, x, w1, w2, *out[1:], *kw, True, True),
               lambda: CPU.se_backward(dy, x, w1, w2, *cpu[1:], *kw, True, True)),
        "eca": (lambda: EMU.eca_backward(dye, xe, w, *eo[1:], "circular", "sigmoid", True),
                lambda: CPU.eca_backward(dye, xe, w, *ec[1:], "circular", "sigmoid", True)),
    }
    for name, (fn, ref) in calls.items():
        EMU.trace()
        got = fn()
        assert [k.split("<")[0] for k in EMU.trace()] == ["cudaLaunchKernelEx", "grad_sum_kernel"], name
        ours, aten, ops = launch_count.count(fn)
        assert (ours, aten) == (2, 0), (name, ops)
        check_outputs(got, ref(), dtype, grad=True)


@pytest.mark.parametrize("dt", ["bf16", "f32"])
@pytest.mark.parametrize("effective", [False, True], ids=["two-layer", "effective"])
@pytest.mark.parametrize("shape,fmt,segments", [((2, 64, 7, 7), "nchw", False), ((2, 64, 9, 9), "cl", True)],
                         ids=["one-segment", "segments"])
@pytest.mark.parametrize("device,excite", [(0, "cooperative"), (0, "launches"), (2, "cooperative")],
                         ids=["h100", "h100-launches", "no-cooperative-device"])
def test_se_two_phase_forward_launches(dt, effective, shape, fmt, segments, device, excite, monkeypatch):
    """The two-phase SE forward: the pool, the excitation straight from its
    partials, the rescale. On the emulated H100 the excitation (the pool's
    combine where it has segments, fc1 split over C, fc2 with the activation
    and gate) is one cooperative launch: three launches in all (issue 3's
    bound); effective SE without segments, one plain launch of its one layer.
    With FUSED_ATTN_CUDA_EXCITE=launches, or on the emulated part without
    cooperative launches, a launch per phase. Never an ATen op that would be a
    kernel (no GEMM, no activation, no conversion of bfloat16 weights); the
    outputs are the CPU backend's either way."""
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "two_phase")
    monkeypatch.setenv("FUSED_ATTN_CUDA_EXCITE", excite)
    EMU.set_device(device)
    v = SEVariant(effective=True, pool="avgmax") if effective else SEVariant()
    x, w1, b1, w2, b2 = se_sample(shape, DTYPES[dt], FORMATS[fmt], v)
    kw = (v.act, v.gate, v.pool)
    fn = lambda: EMU.se_forward(x, w1, b1, w2, b2, *kw)  # noqa: E731
    EMU.trace()
    got = fn()
    passes = [k.split("<")[0] for k in EMU.trace()]
    pool = "reduce_cols_kernel" if fmt == "cl" else "reduce_rows_kernel"
    if excite == "cooperative" and device != 2 and (segments or not effective):
        assert passes == [pool, "cudaLaunchKernelEx", "apply_kernel"], passes
    else:
        combine = ["combine_partials_kernel"] if segments else []
        linear = ["se_linear_kernel"] * (1 if effective else 2)
        assert passes == [pool, *combine, *linear, "apply_kernel"], passes
    ours, aten, ops = launch_count.count(fn)
    assert (ours, aten) == (len(passes), 0), ops
    check_outputs(got, torch.ops.fused_attn.se_forward(x, w1, b1, w2, b2, *kw), DTYPES[dt])


def test_cuda_excite_knob_refuses_unknown_values(monkeypatch):
    """FUSED_ATTN_CUDA_EXCITE takes cooperative or launches, and says so."""
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "two_phase")
    monkeypatch.setenv("FUSED_ATTN_CUDA_EXCITE", "fastest")
    x, w1, b1, w2, b2 = se_sample((2, 16, 3, 3), torch.float32, torch.contiguous_format, SEVariant())
    EMU.trace()
    with pytest.raises(ValueError, match="FUSED_ATTN_CUDA_EXCITE must be cooperative or launches"):
        EMU.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid", "avg")
    assert EMU.trace() == []


@pytest.mark.parametrize("effective", [False, True])
@pytest.mark.parametrize("dt", ["bf16", "f64"])
@pytest.mark.parametrize("shape,fmt", [((2, 64, 7, 7), "nchw"), ((2, 64, 9, 9), "cl")], ids=["one-segment", "segments"])
def test_se_two_phase_backward_launches(dt, effective, shape, fmt, monkeypatch):
    """The two-phase SE backward: Σ dy·x, the excitation's backward (the
    first layer's dz times W2ᵀ split over C, then through the activation's
    derivative times W1ᵀ; effective SE's one layer), both weight gradients
    in one launch, dx: five launches (four), and no ATen op that would be a
    kernel (it was 14 with cuBLAS GEMMs and elementwise ops); where Σ dy·x
    is split into segments (channels_last 2×64×9×9), the excitation reads
    them itself: still five (four). Its results against the CPU backend's,
    with and without the biases, with the max pool's tie counts (effective SE)."""
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "two_phase")
    v = SEVariant(effective=True, pool="avgmax") if effective else SEVariant()
    x, w1, b1, w2, b2 = se_sample(shape, DTYPES[dt], FORMATS[fmt], v)
    kw = (v.act, v.gate, v.pool)
    out = EMU.se_forward(x, w1, b1, w2, b2, *kw)
    cpu = CPU.se_forward(x, w1, b1, w2, b2, *kw)
    dy = grad_like(cpu[0])
    for flags in [(True, True), (False, False)]:
        fn = lambda: EMU.se_backward(dy, x, w1, w2, *out[1:], *kw, *flags)  # noqa: E731
        EMU.trace()
        got = fn()
        passes = [k.split("<")[0] for k in EMU.trace()]
        linear = ["se_linear_kernel"] * (1 if effective else 2)
        pool = "reduce_cols_kernel" if fmt == "cl" else "reduce_rows_kernel"
        assert passes == [pool, *linear, "se_wgrad_kernel", "apply_kernel"], passes
        ours, aten, ops = launch_count.count(fn)
        assert (ours, aten) == (len(passes), 0), ops
        check_outputs(got, CPU.se_backward(dy, x, w1, w2, *cpu[1:], *kw, *flags), DTYPES[dt], grad=True)


@pytest.mark.parametrize("fmt", ["nchw", "cl"])
@pytest.mark.parametrize("dt", ["bf16", "f64"])
def test_eca_two_phase_launches(dt, fmt, monkeypatch):
    """Issue 3's "≤ 3 launches" for the two-phase forward, in ECA: the pool, the
    excitation kernel (the convolution across channels and the gate), the
    rescale, and no ATen op that would be a kernel; the backward: Σ dy·x, the
    excitation's backward and its weight-gradient sum, dx. A reduction split
    over H·W (here channels_last: 4 × 256 channels leave the emulated H100
    idle) adds, in the backward, the small kernel that combines its segments;
    the forward's excitation combines the pool's segments itself."""
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "two_phase")
    x, w, b = eca_sample((4, 256, 7, 7), DTYPES[dt], FORMATS[fmt], ECAVariant(k=5, bias=True))
    out = EMU.eca_forward(x, w, b, "circular", "sigmoid")
    dy = grad_like(out[0])
    calls = {
        "fwd": (lambda: EMU.eca_forward(x, w, b, "circular", "sigmoid"),
                ["reduce_", "eca_excite_fwd_kernel", "apply_kernel"]),
        "bwd": (lambda: EMU.eca_backward(dy, x, w, *out[1:], "circular", "sigmoid", True),
                ["reduce_", "eca_excite_bwd_kernel", "eca_excite_wsum_kernel", "apply_kernel"]),
    }
    for name, (fn, want) in calls.items():
        EMU.trace()
        fn()
        names = [k.split("<")[0] for k in EMU.trace()]
        split = fmt == "cl" and name == "bwd"
        assert (names[1] == "combine_partials_kernel") == split, (name, names)
        names = names[:1] + names[1 + split:]
        assert len(names) == len(want) and all(n.startswith(w_) for n, w_ in zip(names, want, strict=True)), (name, names)
        ours, aten, ops = launch_count.count(fn)
        assert (ours, aten) == (len(want) + split, 0), (name, ops)


@pytest.mark.parametrize("k", [15, 17])
def test_eca_two_phase_largest_kernels(k, monkeypatch):
    """k = 15, the excitation kernels' largest, and k = 17, past it (the ATen
    ops on [N, C] instead), against the CPU backend, C smaller than k."""
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "two_phase")
    for shape, padding in [((3, 300, 5, 4), "zeros"), ((2, 11, 3, 3), "circular")]:
        x, w, b = eca_sample(shape, torch.float32, torch.channels_last, ECAVariant(k=k, bias=True, padding=padding))
        emu, cpu = EMU.eca_forward(x, w, b, padding, "hard_sigmoid"), CPU.eca_forward(x, w, b, padding, "hard_sigmoid")
        check_outputs(emu, cpu, torch.float32)
        dy = grad_like(cpu[0])
        check_outputs(EMU.eca_backward(dy, x, w, *emu[1:], padding, "hard_sigmoid", True),
                      CPU.eca_backward(dy, x, w, *cpu[1:], padding, "hard_sigmoid", True), torch.float32, grad=True)
        EMU.trace()
        EMU.eca_forward(x, w, b, padding, "hard_sigmoid")
        assert any(n.startswith("eca_excite_fwd") for n in EMU.trace()) == (k <= 15)


@pytest.mark.parametrize("path", ["auto", "two_phase"])
def test_se_without_hidden_units(path, monkeypatch):
    """rd = 0 (fc1 [0, C], fc2 [C, 0]), which the checks allow: the logits are
    fc2's bias. The two-phase path keeps the ATen ops for it (the excitation
    kernels have no hidden units to tile)."""
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", path)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 40, 3, 3, generator=g)
    w1, b1 = torch.randn(0, 40, generator=g), torch.randn(0, generator=g)
    w2, b2 = torch.randn(40, 0, generator=g), torch.randn(40, generator=g)
    kw = ("relu", "sigmoid", "avg")
    emu, cpu = EMU.se_forward(x, w1, b1, w2, b2, *kw), CPU.se_forward(x, w1, b1, w2, b2, *kw)
    check_outputs(emu, cpu, torch.float32)
    dy = grad_like(cpu[0])
    check_outputs(EMU.se_backward(dy, x, w1, w2, *emu[1:], *kw, True, True),
                  CPU.se_backward(dy, x, w1, w2, *cpu[1:], *kw, True, True), torch.float32, grad=True)


@pytest.mark.parametrize("light", [False, True])
def test_cbam_without_hidden_units(light):
    """rd = 0 (fc1 [0, C], fc2 [C, 0]): the logits are fc2's bias (twice, one
    per pool, unless light), by ATen's ops instead of cbam_mlp_forward's
    kernels, then the gate by cbam_channel_gate; forward and backward (empty
    MLP weight gradients) against the CPU backend."""
    variant = CBAMVariant(bias=True, light=light)
    args = list(_op_args(variant, torch.float32, (2, 16, 5, 4)))
    g = torch.Generator().manual_seed(6)
    args[1], args[2] = torch.randn(0, 16, generator=g), torch.randn(0, generator=g)
    args[3], args[4] = torch.randn(16, 0, generator=g), torch.randn(16, generator=g)
    args = tuple(args)
    emu, cpu = EMU.cbam_forward(*args), CPU.cbam_forward(*args)
    check_outputs(emu, cpu, torch.float32)
    dy = grad_like(cpu[0])
    ge = EMU.cbam_backward(*cbam_backward_args(args, emu, dy, variant))
    gc = CPU.cbam_backward(*cbam_backward_args(args, cpu, dy, variant))
    check_outputs(ge, gc, torch.float32, grad=True)


@pytest.mark.parametrize("dt", ["f32", "bf16"])
@pytest.mark.parametrize("fmt", ["nchw", "cl"])
@pytest.mark.parametrize("light", [False, True])
def test_cbam_launches(fmt, light, dt):
    """Forward: the spatial pool, the channel MLP (fc1 on both pools' rows,
    fc2 with the gate: two launches of SE's linear kernel, no GEMM), the
    channel pool of x1, the spatial gate's two kernels, the rescale; backward:
    the gate recomputed from the logits (channel_gate_kernel), two reductions,
    the spatial gate's four and the sum of its per-sample weight gradients,
    the MLP's four (no GEMM), dx (a reduction may add its segments' combine).
    No ATen op that would be a kernel either way (in bfloat16 too: the
    spatial conv's weight is read in x's dtype, the BatchNorm's float32
    scalars in theirs)."""
    variant = CBAMVariant(train=True, light=light)
    args = _op_args(variant, DTYPES[dt], (2, 16, 6, 7), FORMATS[fmt])
    EMU.trace()
    out = EMU.cbam_forward(*args)
    names = [k.split("<")[0] for k in EMU.trace() if not k.startswith("combine")]
    assert len(names) == 7 and names[1:3] == ["se_linear_kernel"] * 2, names
    assert names[4:] == ["spatial_conv_kernel", "spatial_gate_kernel", "apply_kernel"], names
    assert names[0].startswith("reduce_") and names[3].startswith("reduce_"), names
    ours, aten, ops = launch_count.count(lambda: EMU.cbam_forward(*args))
    assert aten == 0 and not ops, ops
    bwd_args = cbam_backward_args(args, out, grad_like(out[0]), variant)
    EMU.cbam_backward(*bwd_args)
    names = [k.split("<")[0] for k in EMU.trace() if not k.startswith("combine")]
    assert len(names) == 13 and names[0] == "channel_gate_kernel", names
    assert names[1].startswith("reduce_") and names[7].startswith("reduce_"), names
    # The spatial gate's four, and its per-sample weight gradients summed.
    assert names[2:7] == ["spatial_bn_grad_kernel", "spatial_dz_kernel", "spatial_dmap_kernel",
                          "spatial_wgrad_kernel", "grad_sum_kernel"] and names[12] == "apply_kernel", names
    # The MLP backward: fc1 again, the two layers' backward, both weight gradients.
    assert names[8:12] == ["se_linear_kernel"] * 3 + ["se_wgrad_kernel"], names
    ours, aten, ops = launch_count.count(lambda: EMU.cbam_backward(*bwd_args))
    assert aten == 0 and not ops, ops


BN_DTYPES = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("bn", BN_DTYPES)
@pytest.mark.parametrize("dt", ["f32", "bf16", "f64"])
def test_cbam_parameters_in_their_own_dtypes(dt, bn):
    """The BatchNorm's weight and bias in any floating dtype (a module kept
    in float32 under a bfloat16 x, or a whole .to(dtype) model): the spatial
    kernels read them, and the conv weight, in their own dtypes, converted as
    a conversion launch would, and write dgamma and dbeta in them (but
    from float64 to a 16-bit type, which would round twice: the glue
    converts those two). Forward and backward against the CPU backend, and
    no other ATen op either way but float64's weight-gradient sum."""
    dtype = DTYPES[dt]
    variant = CBAMVariant(train=True, act="silu")
    args = list(_op_args(variant, dtype, (2, 20, 6, 5), torch.channels_last))
    args[6], args[7] = args[6].to(BN_DTYPES[bn]), args[7].to(BN_DTYPES[bn])
    args = tuple(args)
    emu, cpu = EMU.cbam_forward(*args), CPU.cbam_forward(*args)
    check_outputs(emu, cpu, dtype)
    dy = grad_like(cpu[0])
    check_outputs(EMU.cbam_backward(*cbam_backward_args(args, emu, dy, variant)),
                  CPU.cbam_backward(*cbam_backward_args(args, cpu, dy, variant)), dtype, grad=True)
    _, aten, ops = launch_count.count(lambda: EMU.cbam_forward(*args))
    assert aten == 0, ops
    bwd_args = cbam_backward_args(args, emu, dy, variant)
    _, aten, ops = launch_count.count(lambda: EMU.cbam_backward(*bwd_args))
    # float64: the spatial weight gradients' sum is ATen's (their partials are double).
    assert aten == (1 if dt == "f64" else 0) + (2 if dt == "f64" and bn in ("f16", "bf16") else 0), ops


@pytest.mark.parametrize("fmt", ["nchw", "cl"])
@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_cbam_backward_gate_has_the_forwards_bits(dt, gate, fmt):
    """The backward finds the channel max of x1 = x·g (and its ties) by
    recomputing x·g from the saved logits and comparing with the saved max,
    so its g must have the forward's bits (fc2's gate in the forward,
    channel_gate_kernel in the backward): a g one ulp off loses the max's
    gradient at every pixel where that channel is the max. 800 distinct
    logits, against the CPU backend. ATen's CPU sigmoid in the backward
    instead (it differs from the kernel's in ~4% of float32 values) fails the
    float32 cases; in bfloat16, x·g rounded to 8 bits hides most one-ulp
    differences of g, so those cases check the ties' gradients, not this."""
    dtype = DTYPES[dt]
    for light in (False, True):
        variant = CBAMVariant(light=light, gate=gate, k=3)
        args = _op_args(variant, dtype, (4, 200, 5, 6), FORMATS[fmt])
        emu, cpu = EMU.cbam_forward(*args), CPU.cbam_forward(*args)
        check_outputs(emu, cpu, dtype)
        dy = grad_like(cpu[0])
        check_outputs(EMU.cbam_backward(*cbam_backward_args(args, emu, dy, variant)),
                      CPU.cbam_backward(*cbam_backward_args(args, cpu, dy, variant)), dtype, grad=True)


# ---- the planner on other devices, refusals, empty inputs --------------------
@pytest.mark.parametrize("device", [1, 2, 3], ids=["4-SMs", "99KiB", "sm80"])
def test_se_on_other_devices(device):
    """The glue's plan and launches on a small part, one with 99 KiB of shared
    memory per block and an sm_80 (no clusters: two phases)."""
    EMU.set_device(device)
    test_se("auto", (2, 256, 7, 7), "bf16", "cl", SEVariant())
    test_eca("auto", (2, 64, 14, 14), "f32", "nchw", ECAVariant(k=5))


def test_forced_single_launch_without_a_plan_says_why(monkeypatch):
    monkeypatch.setenv("FUSED_ATTN_CUDA_PATH", "fused")
    EMU.set_device(3)  # sm_80
    x, w1, b1, w2, b2 = se_sample((2, 16, 4, 4), torch.float32)
    with pytest.raises(RuntimeError, match="FUSED_ATTN_CUDA_PATH=fused.*needs sm_90"):
        EMU.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid", "avg")


def test_bad_input_is_refused_as_on_the_cpu():
    x, w1, b1, w2, b2 = se_sample((2, 16, 4, 4), torch.float32)
    for args in [(x[0], w1, b1, w2, b2), (x, w1[:, :8], b1, w2, b2), (x.int(), w1, b1, w2, b2)]:
        with pytest.raises((RuntimeError, ValueError, TypeError)) as cpu_err:
            CPU.se_forward(*args, "relu", "sigmoid", "avg")
        with pytest.raises(type(cpu_err.value)):
            EMU.se_forward(*args, "relu", "sigmoid", "avg")
    with pytest.raises(ValueError, match="act must be one of"):
        EMU.se_forward(x, w1, b1, w2, b2, "tanhh", "sigmoid", "avg")


@pytest.mark.parametrize("shape", [(0, 16, 5, 5), (2, 0, 5, 5), (2, 16, 0, 5)], ids=str)
def test_empty(shape):
    v = CBAMVariant(train=True)
    args = _op_args(v, torch.float32, (2, 16, 5, 5))
    x = torch.randn(shape)
    if shape[1] == 0:  # weights for C = 0
        args = (x, args[1][:, :0], args[2], args[3][:0], args[4], *args[5:])
    else:
        args = (x, *args[1:])
    emu, cpu = EMU.cbam_forward(*args), CPU.cbam_forward(*args)
    for e, c in zip(emu, cpu, strict=True):
        assert e.shape == c.shape
        torch.testing.assert_close(e, c, equal_nan=True)
    xs, w1, b1, w2, b2 = se_sample((2, 16, 5, 5), torch.float32)
    xs = torch.randn(shape)
    if shape[1] == 0:
        w1, w2, b2 = w1[:, :0], w2[:0], None
    emu, cpu = EMU.se_forward(xs, w1, b1, w2, b2, "relu", "sigmoid", "avg"), \
        CPU.se_forward(xs, w1, b1, w2, b2, "relu", "sigmoid", "avg")
    for e, c in zip(emu, cpu, strict=True):
        assert e.shape == c.shape
        torch.testing.assert_close(e, c, equal_nan=True)
