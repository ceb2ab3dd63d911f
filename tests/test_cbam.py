"""CBAM: every CPU backend against the float64 reference (outputs, every
gradient, the BatchNorm's running statistics, train and eval), ties in both
max pools, the ops (opcheck, compile), bad input, and the modules."""
import dataclasses
import functools

import pytest
import torch
from torch._prims_common import suggest_memory_format

import fused_attn

from .utils import DTYPES, FORMATS, GRAD_TOL, TOL, assert_close, cpu_impls, ids, impl_backend


@pytest.fixture(params=[b for b in cpu_impls() if b != "reference"])
def backend(request, monkeypatch):
    """The C++ backend (its AVX2 and baseline builds) and Triton."""
    name = impl_backend(request.param, monkeypatch)
    with fused_attn.use_backend(name):
        yield name


@dataclasses.dataclass(frozen=True)
class CBAMVariant:
    light: bool = False
    pool_order: str = "mean_max"
    k: int = 7
    bias: bool = False        # the MLP's biases (official CBAM: nn.Linear with bias)
    affine: bool = True       # the BatchNorm's weight and bias
    act: str = "relu"
    gate: str = "sigmoid"
    train: bool = False       # batch statistics (and a running-statistics update)

    def __str__(self):
        kind = "light" if self.light else self.pool_order
        return (f"{kind}-k{self.k}-{self.act}-{self.gate}-{'bias' if self.bias else 'nobias'}"
                f"-{'affine' if self.affine else 'noaffine'}-{'train' if self.train else 'eval'}")


VARIANTS = [
    CBAMVariant(),                                                      # timm CbamModule, eval
    CBAMVariant(train=True),                                            # timm CbamModule, train
    CBAMVariant(pool_order="max_mean", bias=True, train=True),          # the official CBAM
    CBAMVariant(light=True, bias=True),                                 # timm LightCbamModule
    CBAMVariant(light=True, k=3, train=True),
    CBAMVariant(k=3, act="silu", gate="hard_sigmoid", affine=False),
    CBAMVariant(k=1, act="gelu", pool_order="max_mean", affine=False, train=True),
]
# Odd sizes, C = 1, H·W = 1 (eval only: BatchNorm's batch statistics need
# more than one value), 13×17, N = 1.
SHAPES = [(2, 1, 5, 6), (1, 3, 7, 7), (3, 16, 1, 1), (2, 37, 13, 17), (1, 130, 7, 7), (4, 64, 6, 6)]


def cbam_sample(shape, dtype, memory_format, variant, *, seed=0, device="cpu", integer=False, rd=None):
    """x and the weights (random, never zeros); BN parameters and running
    statistics in float32 as the module keeps them. ``integer``: x takes few
    distinct values, so both max pools have ties."""
    g = torch.Generator().manual_seed(seed)

    def rand(*size, scale=1.0, dt=dtype):
        return (torch.randn(*size, generator=g, dtype=torch.float64) * scale).to(dtype=dt, device=device)

    N, C, H, W = shape
    rd = max(1, C // 4) if rd is None else rd
    if integer:
        x = torch.randint(-2, 3, shape, generator=g).to(dtype=dtype, device=device)
    else:
        x = rand(*shape)
    x = x.to(memory_format=memory_format)
    maps = 1 if variant.light else 2
    params = dict(
        fc1_weight=rand(rd, C, scale=C ** -0.5), fc1_bias=rand(rd, scale=0.5) if variant.bias else None,
        fc2_weight=rand(C, rd, scale=max(rd, 1) ** -0.5), fc2_bias=rand(C, scale=0.5) if variant.bias else None,
        spatial_weight=rand(1, maps, variant.k, variant.k, scale=0.4 / variant.k),
        bn_weight=rand(1, scale=0.3, dt=torch.float32).abs() + 0.5 if variant.affine else None,
        bn_bias=rand(1, scale=0.3, dt=torch.float32) if variant.affine else None)
    buffers = dict(bn_running_mean=rand(1, scale=0.3, dt=torch.float32),
                   bn_running_var=rand(1, dt=torch.float32).abs() + 0.5,
                   bn_num_batches_tracked=torch.tensor(3, device=device))
    return x, params, buffers


def run(fn, x, params, buffers, variant):
    return fn(x, **params, **buffers, bn_training=variant.train, act=variant.act, gate=variant.gate,
              light=variant.light, pool_order=variant.pool_order)


def check_against_reference(shape, dtype, memory_format, variant, *, device="cpu", seed=0, integer=False,
                            rd=None):
    x, params, buffers = cbam_sample(shape, dtype, memory_format, variant, seed=seed, device=device,
                                     integer=integer, rd=rd)
    check_inputs_against_reference(x, params, buffers, variant, seed=seed)


def check_inputs_against_reference(x, params, buffers, variant, *, seed=0):
    """Forward, gradients and running statistics of fused_attn.cbam on these
    inputs against the float64 reference; the output in x's memory format."""
    dtype, device = x.dtype, x.device
    memory_format = suggest_memory_format(x)
    x = x.detach().requires_grad_()
    params = {k: (v.detach() if v is not None else None) for k, v in params.items()}
    leaves = {k: (v.requires_grad_() if v is not None else None) for k, v in params.items()}
    bufs = {k: v.clone() for k, v in buffers.items()}
    y = run(fused_attn.cbam, x, leaves, bufs, variant)
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous(memory_format=memory_format)

    x64 = x.detach().double().requires_grad_()
    leaves64 = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in params.items()}
    bufs64 = {k: (v.clone().double() if v.is_floating_point() else v.clone()) for k, v in buffers.items()}
    y_ref = run(fused_attn.reference.cbam, x64, leaves64, bufs64, variant)
    assert_close(y, y_ref, dtype)
    # The gradients against a float64 evaluation that rounds x1 as x's dtype
    # does: the max pools' ties (and so where their gradient goes) are then
    # the same as the kernel's.
    x64 = x.detach().double().requires_grad_()
    leaves64 = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in params.items()}
    y_ref = run(functools.partial(fused_attn.reference.cbam, x1_dtype=dtype), x64, leaves64,
                {k: (v.clone().double() if v.is_floating_point() else v.clone()) for k, v in buffers.items()}, variant)

    g = torch.Generator().manual_seed(seed + 1)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    names = ["x"] + [k for k, v in leaves.items() if v is not None]
    grads = torch.autograd.grad(y, [x] + [v for v in leaves.values() if v is not None], dy)
    grads_ref = torch.autograd.grad(y_ref, [x64] + [v for v in leaves64.values() if v is not None], dy.double())
    for name, gr, g_ref in zip(names, grads, grads_ref, strict=True):
        expected_dtype = torch.float32 if name.startswith("bn_") else dtype
        assert gr.dtype == expected_dtype and gr.shape == g_ref.shape, name
        # BN parameters stay float32 (as the module keeps them): at most fp32's precision.
        tol_dtype = torch.float32 if name.startswith("bn_") and dtype == torch.float64 else dtype
        if name == "spatial_weight" and variant.train and dtype == torch.float32:
            # Under batch statistics the loss is invariant to the scale of
            # the spatial weight, so its gradient is a nearly cancelling sum
            # whose float32 rounding error is far above float32's epsilon
            # times the result: measured against what the reference itself,
            # run in float32, gets wrong (at most four times that).
            e32 = (_reference_grad_in_float32(x, params, buffers, variant, dy, name) - g_ref).abs().max().item()
            err = (gr.double() - g_ref).abs().max().item()
            scale = g_ref.abs().max().item()
            usual = GRAD_TOL[dtype]["atol"] * max(1.0, scale) + GRAD_TOL[dtype]["rtol"] * scale
            assert err <= max(usual, 4 * e32), (name, err, e32)
            continue
        assert_close(gr, g_ref, tol_dtype, grad=True)
    # Running statistics: updated in training exactly as nn.BatchNorm2d does.
    for name in ("bn_running_mean", "bn_running_var"):
        # (z's batch mean and variance: of the order of one, low-precision x
        # moves them by its rounding)
        tol = dict(atol=1e-6, rtol=1e-5) if dtype in (torch.float32, torch.float64) else TOL[dtype]
        torch.testing.assert_close(bufs[name].double(), bufs64[name], **tol, msg=name)
        if not variant.train:
            assert torch.equal(bufs[name], buffers[name]), name
    assert int(bufs["bn_num_batches_tracked"]) == int(buffers["bn_num_batches_tracked"]) + int(variant.train)


def _reference_grad_in_float32(x, params, buffers, variant, dy, name):
    """The reference's gradient of parameter `name`, run in float32 (as float64)."""
    x32 = x.detach().float().requires_grad_()
    leaves = {k: (v.detach().float().requires_grad_() if v is not None else None) for k, v in params.items()}
    y32 = run(fused_attn.reference.cbam, x32, leaves, {k: v.clone() for k, v in buffers.items()}, variant)
    g32, = torch.autograd.grad(y32, [leaves[name]], dy.float())
    return g32.double()


def _shapes_for(variant):
    # (train mode with H·W = 1: batch statistics over N values magnify
    # low-precision rounding past any sensible tolerance; eval only there)
    return [s for s in SHAPES if not (variant.train and s[2] * s[3] == 1)]


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ids(DTYPES))
def test_matches_reference(backend, dtype, memory_format, variant):
    shapes = _shapes_for(variant)
    if backend == "triton":   # the interpreter is slow: the small shapes
        shapes = [s for s in shapes if s[1] * s[2] * s[3] <= 2000]
    for shape in shapes:
        check_against_reference(shape, dtype, memory_format, variant)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("light", [False, True], ids=["cbam", "light"])
def test_ties_in_both_max_pools(backend, light, memory_format, train):
    """Integer-valued x (five values): every channel's spatial max and every
    pixel's channel max is tied; the gradient is split among the tied maxima
    as torch.amax's is. float64, so the comparison is exact up to rounding."""
    variant = CBAMVariant(light=light, k=3, train=train)
    check_against_reference((2, 12, 5, 6), torch.float64, memory_format, variant, integer=True)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["ema", "cumulative"])
def test_running_statistics_over_steps(backend, momentum):
    """Three training steps update running_mean / running_var /
    num_batches_tracked as nn.BatchNorm2d does (momentum None: cumulative)."""
    variant = CBAMVariant(train=True, k=3)
    _, params, buffers = cbam_sample((2, 8, 5, 5), torch.float32, torch.contiguous_format, variant)
    ref_buffers = {k: v.clone() for k, v in buffers.items()}
    for step in range(3):
        x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(step))
        kw = dict(bn_training=True, bn_momentum=momentum)
        fused_attn.cbam(x, **params, **buffers, **kw)
        fused_attn.reference.cbam(x, **params, **ref_buffers, **kw)
    for k in buffers:
        torch.testing.assert_close(buffers[k], ref_buffers[k], atol=1e-6, rtol=1e-5, msg=k)


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
def test_gradcheck_float64(backend, variant, memory_format):
    """Every input's gradient (x, the MLP, the spatial conv, the BatchNorm's
    affine parameters) against float64 finite differences."""
    if backend == "triton" and memory_format != torch.contiguous_format:
        pytest.skip("the interpreter is slow: NCHW only")
    shape = (2, 5, 3, 4) if backend == "triton" else (2, 6, 4, 5)
    x, params, buffers = cbam_sample(shape, torch.float64, memory_format, variant, seed=2)
    params = {k: None if v is None else v.double() for k, v in params.items()}   # a .double() module
    buffers = {k: v.double() if v.is_floating_point() else v for k, v in buffers.items()}
    names = [k for k, v in params.items() if v is not None]
    wrt = [x.requires_grad_()] + [params[k].requires_grad_() for k in names]

    def f(x, *ws):
        fresh = {k: v.clone() for k, v in buffers.items()}   # train mode updates the running statistics
        return run(fused_attn.cbam, x, {**params, **dict(zip(names, ws, strict=True))}, fresh, variant)

    # (Triton: fast mode, a random projection of the Jacobian, few calls of the slow interpreter.)
    assert torch.autograd.gradcheck(f, wrt, eps=1e-6, atol=1e-7, fast_mode=backend == "triton")


def test_deterministic(backend):
    variant = CBAMVariant(train=True)
    x, params, buffers = cbam_sample((3, 24, 9, 9), torch.float32, torch.channels_last, variant)
    outs = []
    for _ in range(2):
        xx = x.clone().requires_grad_()
        ps = [p.clone().requires_grad_() for p in params.values() if p is not None]
        it = iter(ps)
        leaves = {k: (next(it) if v is not None else None) for k, v in params.items()}
        y = run(fused_attn.cbam, xx, leaves, {k: v.clone() for k, v in buffers.items()}, variant)
        outs.append([y] + list(torch.autograd.grad(y, [xx] + ps, torch.ones_like(y))))
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_cpu_chunks_of_samples(monkeypatch, threads, train):
    """The C++ backend walks the batch in chunks of samples (sample_chunk:
    the cache budget, at least one sample per thread, evened out to a multiple
    of the thread count). Budgets from one sample to the whole batch, with 1-3
    threads, at N = 7 (odd, so chunks are uneven or cut), must all match the
    reference, running statistics included."""
    if "cpu" not in cpu_impls():
        pytest.skip("C++ extension not built")
    variant = CBAMVariant(train=train)
    shape = (7, 24, 5, 6)
    per_sample = 24 * 5 * 6 * 4 * 2
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for samples in (1, 2, 3, 5, 7):
            monkeypatch.setenv("FUSED_ATTN_CPU_CHUNK_BYTES", str(samples * per_sample))
            with fused_attn.use_backend("cpu"):
                check_against_reference(shape, torch.float32, torch.channels_last, variant, seed=samples)
    finally:
        torch.set_num_threads(previous)


def test_zero_batch(backend):
    x, params, buffers = cbam_sample((2, 8, 4, 4), torch.float32, torch.contiguous_format, CBAMVariant())
    y = run(fused_attn.cbam, x[:0], params, buffers, CBAMVariant())
    assert y.shape == (0, 8, 4, 4)


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("variant", [CBAMVariant(bias=True, train=True), CBAMVariant(light=True, bias=True),
                                     CBAMVariant(light=True)], ids=str)
def test_without_hidden_units(backend, variant, memory_format):
    """fc1 with no rows (rd = 0): the channel gate is the gate of fc2's bias
    (or of zero), and the MLP's weight gradients are empty tensors."""
    check_against_reference((2, 12, 5, 6), torch.float32, memory_format, variant, rd=0)


def test_non_contiguous_input(backend):
    """A slice and a permuted view that is neither NCHW nor channels_last."""
    variant = CBAMVariant()
    x, params, buffers = cbam_sample((2, 16, 10, 12), torch.float32, torch.contiguous_format, variant)
    for view in (x[1:, :, 1:8, ::2], x.permute(0, 1, 3, 2)):
        y = run(fused_attn.cbam, view, params, dict(buffers), variant)
        y_ref = run(fused_attn.reference.cbam, view.double(), {k: None if v is None else v.double()
                                                                   for k, v in params.items()},
                    {k: v.clone() for k, v in buffers.items()}, variant)
        assert_close(y, y_ref, torch.float32)


# --- the ops -----------------------------------------------------------------

def _op_args(variant, dtype=torch.float32, shape=(2, 16, 6, 7), memory_format=torch.contiguous_format):
    x, p, b = cbam_sample(shape, dtype, memory_format, variant)
    ws = p["spatial_weight"][0]
    rm, rv = (None, None) if variant.train else (b["bn_running_mean"], b["bn_running_var"])
    return (x, p["fc1_weight"], p["fc1_bias"], p["fc2_weight"], p["fc2_bias"], ws, p["bn_weight"], p["bn_bias"],
            rm, rv, 1e-5, variant.act, variant.gate, variant.light, variant.pool_order == "max_mean")


OPCHECK_VARIANTS = [CBAMVariant(), CBAMVariant(train=True, bias=True, pool_order="max_mean"),
                    CBAMVariant(light=True, k=3, affine=False)]


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("variant", OPCHECK_VARIANTS, ids=ids(OPCHECK_VARIANTS))
def test_opcheck(backend, variant, memory_format):
    """Schema, fake kernel, autograd registration (torch.library.opcheck)."""
    op = torch.ops.fused_attn.cbam_forward_triton if backend == "triton" else torch.ops.fused_attn.cbam_forward
    args = _op_args(variant, memory_format=memory_format)
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() and i not in (8, 9)
                 else a for i, a in enumerate(args))
    tests = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(op, args, test_utils=tests)


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ids(DTYPES))
def test_pools_propagate_nan_and_inf_as_amax_does(backend, dtype, memory_format):
    """The saved pools (per channel over pixels, per pixel over channels of
    x1) against mean / amax where values are NaN or infinite: a max is NaN
    exactly where a NaN is pooled, and +inf beside -inf gives a NaN mean but
    a +inf max (the kernels' fast max is rechecked where the sum is NaN)."""
    N, C, H, W = 2, 37, 5, 7
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, C, H, W, generator=g)
    # Sample 0: +inf in channel 1 and -inf in channel 4 at one pixel, with
    # weights that make every logit +inf (w1's column 4 negative, the rest
    # and w2 positive), so g = 1 and x1 holds both infinities there.
    x[0, 1, 2, 3], x[0, 4, 2, 3] = float("inf"), float("-inf")
    # Sample 1: a channel with both infinities (NaN mean, +inf max), one with
    # a NaN, one whose every pixel is -inf.
    x[1, 6, 0, 0], x[1, 6, 4, 6] = float("inf"), float("-inf")
    x[1, 9, 3, 1] = float("nan")
    x[1, 12] = float("-inf")
    x = x.to(dtype).contiguous(memory_format=memory_format)
    rd = 4
    w1 = torch.rand(rd, C, generator=g, dtype=torch.float64) + 0.1
    w1[:, 4] = -w1[:, 4]
    w2 = torch.rand(C, rd, generator=g, dtype=torch.float64) + 0.1
    ws = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    w1, w2, ws = (t.to(dtype) for t in (w1, w2, ws))
    rm, rv = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    op = torch.ops.fused_attn.cbam_forward_triton if backend == "triton" else torch.ops.fused_attn.cbam_forward
    _, pooled, logits, smap, _, _ = op(x, w1, None, w2, None, ws, None, None, rm, rv, 1e-5, "relu", "sigmoid",
                                       False, False)
    xf = x.to(pooled.dtype)
    torch.testing.assert_close(pooled[0], xf.mean((2, 3)), equal_nan=True)
    torch.testing.assert_close(pooled[1], xf.amax((2, 3)), equal_nan=True)
    assert torch.equal(logits[0], torch.full_like(logits[0], float("inf")))
    x1 = xf[0] * 1.0   # g = sigmoid(+inf) = 1: x1 is x
    torch.testing.assert_close(smap[0, 0], x1.mean(0).flatten(), equal_nan=True)
    torch.testing.assert_close(smap[1, 0], x1.amax(0).flatten(), equal_nan=True)
    assert smap[1, 0, 2 * W + 3].item() == float("inf") and torch.isnan(smap[0, 0, 2 * W + 3])
    # Sample 1's logits are NaN (its pooled vector holds a NaN): so is every x1, and every pixel's max.
    assert torch.isnan(smap[1, 1]).all()


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compile_fullgraph(dynamic):
    """torch.compile(fullgraph=True) of fused_attn.cbam with a running-statistics
    update (C++ backend; the Triton ops compile on GPU tensors only)."""
    variant = CBAMVariant(train=True)
    x, params, buffers = cbam_sample((2, 16, 6, 6), torch.float32, torch.contiguous_format, variant)
    eager_bufs = {k: v.clone() for k, v in buffers.items()}

    def f(x, params, bufs):
        return run(fused_attn.cbam, x, params, bufs, variant)

    with fused_attn.use_backend("cpu"):
        compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
        y = compiled(x, params, buffers)
        y_eager = f(x, params, eager_bufs)
    torch.testing.assert_close(y, y_eager)
    for k in buffers:
        torch.testing.assert_close(buffers[k], eager_bufs[k])


# --- bad input ---------------------------------------------------------------

def _call(**overrides):
    variant = CBAMVariant()
    x, params, buffers = cbam_sample((2, 16, 5, 5), torch.float32, torch.contiguous_format, variant)
    kwargs = dict(params, **buffers)
    x = overrides.pop("x", x)
    kwargs.update(overrides)
    return fused_attn.cbam(x, **kwargs)


BAD = [
    (dict(x=torch.randn(2, 16, 5)), ValueError, "x must be 4-D"),
    (dict(x=torch.randn(2, 8, 5, 5)), ValueError, "fc1_weight"),
    (dict(x=torch.randint(0, 3, (2, 16, 5, 5))), TypeError, "x must be float"),
    (dict(x=torch.randn(2, 16, 5, 5, dtype=torch.complex64)), TypeError, "x must be float"),
    (dict(fc2_weight=torch.randn(16, 3)), ValueError, "fc2_weight"),
    (dict(spatial_weight=torch.randn(1, 2, 4, 4)), ValueError, "odd"),
    (dict(spatial_weight=torch.randn(1, 2, 17, 17)), ValueError, "at most"),
    (dict(spatial_weight=torch.randn(1, 1, 7, 7)), ValueError, "spatial_weight"),
    (dict(spatial_weight=torch.randn(1, 2, 7, 7, dtype=torch.float64)), TypeError, "spatial_weight"),
    (dict(bn_weight=torch.randn(2)), ValueError, "bn_weight"),
    (dict(act="tanh"), ValueError, "act must be one of"),
    (dict(gate="softmax"), ValueError, "gate must be one of"),
    (dict(pool_order="max"), ValueError, "pool_order"),
]


OP_BAD = [(5, torch.randn(2, 17, 17), ValueError, "at most 15"),
          (6, torch.randn(2), ValueError, "bn_weight must have one element"),
          (8, torch.zeros(1, dtype=torch.int64), TypeError, "bn_running_mean must be a floating-point")]


@pytest.mark.skipif(not fused_attn.HAS_C, reason="needs the compiled ops")
@pytest.mark.parametrize("index, value, exc, match", OP_BAD, ids=[m for *_, m in OP_BAD])
def test_the_compiled_op_checks_its_own_arguments(index, value, exc, match):
    """Called directly (torch.ops, past fused_attn.cbam's checks), the C++ op
    refuses what its kernels cannot take."""
    args = list(_op_args(CBAMVariant()))
    args[index] = value
    with pytest.raises(exc, match=match):
        torch.ops.fused_attn.cbam_forward(*args)


@pytest.mark.parametrize("overrides, exc, match", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_raises_and_changes_nothing(backend, overrides, exc, match):
    before = {k: v.clone() for k, v in overrides.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(exc, match=match):
        _call(**overrides)
    for k, v in before.items():
        assert torch.equal(overrides[k], v)


# --- the modules -------------------------------------------------------------

timm_cbam = pytest.importorskip("timm.layers.cbam")


def _module_cases():
    from .test_cbam_reference import OfficialCBAM

    return {
        "timm-cbam-k7": lambda: timm_cbam.CbamModule(32, rd_ratio=1 / 8),
        "timm-cbam-k3-bias": lambda: timm_cbam.CbamModule(32, rd_ratio=1 / 8, spatial_kernel_size=3, mlp_bias=True),
        "timm-lcbam-k7": lambda: timm_cbam.LightCbamModule(32, rd_ratio=1 / 8),
        "timm-lcbam-k3-bias": lambda: timm_cbam.LightCbamModule(32, rd_ratio=1 / 8, spatial_kernel_size=3,
                                                                mlp_bias=True),
        "official-k7": lambda: OfficialCBAM(32, reduction_ratio=8, kernel_size=7),
        "official-k3": lambda: OfficialCBAM(32, reduction_ratio=8, kernel_size=3),
    }


MODULE_CASES = list(_module_cases())


def _randomized(make, seed=0):
    from .test_cbam_reference import _randomize_bn

    torch.manual_seed(seed)
    m = make()
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            _randomize_bn(bn, seed)
    return m


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", MODULE_CASES)
def test_from_module_matches_the_original(backend, case, train, memory_format):
    """Output, x's and every parameter's gradient and the BatchNorm's buffers
    after a step: the fused module against the original (float32), sharing
    nothing but starting equal; state_dict keys unchanged."""
    import copy

    original = _randomized(_module_cases()[case]).train(train)
    twin = copy.deepcopy(original)
    fused = fused_attn.nn.CBAM.from_module(twin)
    light = "lcbam" in case
    assert isinstance(fused, fused_attn.nn.LightCBAM if light else fused_attn.nn.CBAM)
    assert list(fused.state_dict()) == list(original.state_dict())
    assert fused.training == train
    x = torch.randn(3, 32, 9, 11).to(memory_format=memory_format)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y = original(xa), fused(xb)
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=2e-5)
    dy = torch.randn_like(y)
    grads_ref = torch.autograd.grad(y_ref, [xa] + list(original.parameters()), dy)
    grads = torch.autograd.grad(y, [xb] + list(fused.parameters()), dy)
    for (name, _), g, g_ref in zip([("x", None)] + list(original.named_parameters()), grads, grads_ref, strict=True):
        tol = 1e-4 * max(1.0, g_ref.abs().max().item())
        torch.testing.assert_close(g, g_ref, atol=tol, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    for (name, b_ref), b in zip(original.named_buffers(), fused.buffers(), strict=True):
        torch.testing.assert_close(b, b_ref, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_constructed_module_has_timm_names_and_loads_its_state_dict():
    ours = fused_attn.nn.CBAM(64, rd_ratio=1 / 16, spatial_kernel_size=7)
    theirs = _randomized(lambda: timm_cbam.CbamModule(64))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    light = fused_attn.nn.LightCBAM(64, spatial_kernel_size=3)
    assert list(light.state_dict()) == list(timm_cbam.LightCbamModule(64, spatial_kernel_size=3).state_dict())
    x = torch.randn(2, 64, 7, 7)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), atol=2e-5, rtol=2e-5)


def test_from_module_refuses_what_it_cannot_represent():
    from .test_cbam_reference import OfficialCBAM

    m = timm_cbam.CbamModule(32, rd_ratio=1 / 8)
    m.spatial.conv.conv.padding = (0, 0)
    with pytest.raises(ValueError, match="spatial conv"):
        fused_attn.nn.CBAM.from_module(m)
    m = timm_cbam.CbamModule(32, rd_ratio=1 / 8)
    m.channel.act = torch.nn.Tanh()
    with pytest.raises(ValueError, match="unsupported activation"):
        fused_attn.nn.CBAM.from_module(m)
    m = OfficialCBAM(32)
    m.no_spatial = True
    with pytest.raises(ValueError, match="no_spatial"):
        fused_attn.nn.CBAM.from_module(m)
    with pytest.raises(TypeError, match="not a CBAM"):
        fused_attn.nn.CBAM.from_module(torch.nn.Conv2d(3, 3, 1))
