"""Efficient Channel Attention: every CPU backend against the reference,
gradients, the ops (opcheck, compile), the modules and their conversions."""
import dataclasses

import pytest
import torch
from torch import nn

import fused_attn

from .utils import DTYPES, FORMATS, assert_close, ids


@dataclasses.dataclass(frozen=True)
class ECAVariant:
    k: int = 3
    padding: str = "zeros"
    gate: str = "sigmoid"
    bias: bool = False

    def __str__(self):
        return f"k{self.k}-{self.padding}-{self.gate}-{'bias' if self.bias else 'nobias'}"


VARIANTS = [
    ECAVariant(),                                           # timm EcaModule, official eca_layer
    ECAVariant(k=5),                                        # ResNet-50 sites
    ECAVariant(k=7, padding="circular"),                    # timm CecaModule
    ECAVariant(k=9, padding="circular", bias=True, gate="hard_sigmoid"),
    ECAVariant(k=1, gate="hard_sigmoid", bias=True),
]
# C smaller than k (C = 1, 3 with k up to 9), odd sizes, H·W = 1.
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 8, 1, 1), (2, 37, 13, 17), (1, 130, 7, 7), (4, 64, 6, 6)]


def eca_sample(shape, dtype, memory_format, variant, *, seed=0, requires_grad=False, device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def rand(*size, scale=1.0):
        t = (torch.randn(*size, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
        return t.requires_grad_(requires_grad)

    x = rand(*shape).detach().to(memory_format=memory_format).requires_grad_(requires_grad)
    w = rand(variant.k, scale=3.0 / variant.k)   # logits of order one for pooled means of order 1/sqrt(HW)
    b = rand(1, scale=0.5) if variant.bias else None
    return x, w, b


def reference64(x, w, b, variant):
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (x, w, b)]
    y = fused_attn.reference.efficient_channel_attention(*leaves, padding=variant.padding, gate=variant.gate)
    return y, leaves


def run_eca(x, w, b, variant):
    return fused_attn.efficient_channel_attention(x, w, b, padding=variant.padding, gate=variant.gate)


def check_eca_against_reference(shape, dtype, memory_format, variant, *, device="cpu", seed=0):
    inputs = eca_sample(shape, dtype, memory_format, variant, seed=seed, requires_grad=True, device=device)
    y = run_eca(*inputs, variant)
    assert y.dtype == dtype and y.shape == inputs[0].shape
    assert y.is_contiguous(memory_format=memory_format)
    y_ref, leaves = reference64(*inputs, variant)
    assert_close(y, y_ref, dtype)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    dy = dy.to(dtype=dtype, device=device).to(memory_format=memory_format)
    wrt = [t for t in inputs if t is not None]
    grads = torch.autograd.grad(y, wrt, dy)
    grads_ref = torch.autograd.grad(y_ref, [t for t in leaves if t is not None], dy.double())
    names = [n for n, t in zip(("x", "conv_weight", "conv_bias"), inputs, strict=True) if t is not None]
    for name, gr, g_ref, t in zip(names, grads, grads_ref, wrt, strict=True):
        assert gr.dtype == dtype and gr.shape == t.shape, name
        assert_close(gr, g_ref, dtype, grad=True)


@pytest.mark.parametrize("variant", VARIANTS, ids=ids(VARIANTS))
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ids(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=ids(SHAPES))
def test_forward_backward_match_reference(backend, shape, dtype, memory_format, variant):
    check_eca_against_reference(shape, dtype, memory_format, variant, seed=hash(shape) % 1000)


@pytest.mark.parametrize("variant", [VARIANTS[1], VARIANTS[3]], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_gradcheck_float64(backend, variant, memory_format):
    shape = (1, 6, 2, 3) if backend == "triton" else (2, 7, 3, 4)
    inputs = eca_sample(shape, torch.float64, memory_format, variant, seed=1, requires_grad=True)
    wrt = [t for t in inputs if t is not None]

    def f(*args):
        it = iter(args)
        return run_eca(*[None if t is None else next(it) for t in inputs], variant)

    assert torch.autograd.gradcheck(f, wrt, eps=1e-6, atol=1e-7)


def test_circular_matches_f_pad_circular():
    """Where F.pad(mode='circular') is defined (pad <= C), the reference's
    wrap-around is the same thing."""
    x = torch.randn(2, 12, 4, 4, dtype=torch.float64)
    w = torch.randn(5, dtype=torch.float64)
    p = torch.nn.functional.pad(x.mean((2, 3))[:, None, :], (2, 2), mode="circular")
    z = torch.nn.functional.conv1d(p, w.view(1, 1, 5))[:, 0]
    expected = x * torch.sigmoid(z)[:, :, None, None]
    torch.testing.assert_close(fused_attn.reference.efficient_channel_attention(x, w, padding="circular"), expected)


@pytest.mark.parametrize("C, k", [(1, 3), (64, 3), (256, 5), (512, 5), (1024, 5), (2048, 7), (96, 3)])
def test_kernel_size_from_channels_matches_timm(C, k):
    timm_eca = pytest.importorskip("timm.layers.eca")
    assert fused_attn.reference.eca_kernel_size(C) == k == timm_eca.EcaModule(C).conv.kernel_size[0]


def test_sigmoid_gate_across_the_float_range(backend):
    """The CPU gates run on whole vectors with their own exp (csrc/cpu/vec_math.h):
    y = x·sigmoid(x) (k = 1, weight 1, H = W = 1) against eager PyTorch from
    -120 to 120, through where e^-x overflows float (the gate is exactly 0
    beyond, so an infinite x gives NaN as in eager), and at ±inf, NaN, ±0."""
    inf, nan = float("inf"), float("nan")
    special = [inf, -inf, nan, 0.0, -0.0, 1e-30, -88.72, -88.73, -87.0, 88.72, 103.0]
    z = torch.cat([torch.linspace(-120, 120, 4001), torch.tensor(special)])
    x = z.reshape(1, -1, 1, 1)
    y = fused_attn.efficient_channel_attention(x, torch.ones(1, 1, 1), gate="sigmoid")
    expected = x * torch.sigmoid(x)
    torch.testing.assert_close(y, expected, atol=1e-30, rtol=1e-6, equal_nan=True)
    beyond = (x < -88.73) & x.isfinite()
    assert beyond.sum() > 100 and (y[beyond] == 0).all()


def test_deterministic(backend):
    variant = ECAVariant(k=5, padding="circular", bias=True)
    for memory_format in FORMATS:
        inputs = eca_sample((4, 96, 20, 20), torch.float32, memory_format, variant, seed=5, requires_grad=True)
        wrt = [t for t in inputs if t is not None]
        dy = torch.randn(inputs[0].shape)
        runs = []
        for _ in range(2):
            y = run_eca(*inputs, variant)
            runs.append([y] + list(torch.autograd.grad(y, wrt, dy)))
        for a, b in zip(*runs, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("bad, match", [
    (dict(w=torch.randn(4)), "odd"),
    (dict(w=torch.randn(2, 3)), r"\[k\]"),
    (dict(w=torch.randn(1, 2, 3)), r"\[1, 1, k\]"),
    (dict(w=torch.randn(3, dtype=torch.float64)), "dtype"),
    (dict(b=torch.randn(2)), "conv_bias"),
    (dict(x=torch.randn(2, 8, 5)), "4-D"),
    (dict(x=torch.ones(2, 8, 3, 3, dtype=torch.int32)), "float32"),
    (dict(padding="reflect"), "padding"),
    (dict(gate="tanh"), "gate"),
])
def test_bad_input_is_refused_with_a_message(backend, bad, match):
    args = dict(x=torch.randn(2, 8, 3, 3), w=torch.randn(3), b=None, padding="zeros", gate="sigmoid")
    args.update(bad)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        fused_attn.efficient_channel_attention(args["x"], args["w"], args["b"], padding=args["padding"],
                                               gate=args["gate"])


# ---- the ops -----------------------------------------------------------------

needs_c = pytest.mark.skipif(not fused_attn.HAS_C, reason="the ops are defined by the compiled extension")

OPCHECK_CASES = [
    ((2, 8, 5, 3), torch.float32, torch.contiguous_format, ECAVariant(k=3)),
    ((2, 8, 5, 3), torch.float32, torch.channels_last, ECAVariant(k=5, padding="circular", bias=True)),
    ((3, 4, 1, 1), torch.float64, torch.contiguous_format, ECAVariant(k=7, gate="hard_sigmoid")),
    ((1, 5, 4, 4), torch.bfloat16, torch.channels_last, ECAVariant(k=3, bias=True)),
    ((2, 6, 3, 3), torch.float16, torch.contiguous_format, ECAVariant(k=9, padding="circular")),
]


@needs_c
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
def test_opcheck(case):
    shape, dtype, fmt, v = case
    x, w, b = eca_sample(shape, dtype, fmt, v, seed=2, requires_grad=True)
    torch.library.opcheck(torch.ops.fused_attn.eca_forward.default, (x, w, b, v.padding, v.gate))
    with torch.no_grad():
        _, pooled, logits = torch.ops.fused_attn.eca_forward(x, w, b, v.padding, v.gate)
    torch.library.opcheck(torch.ops.fused_attn.eca_backward.default,
                          (torch.randn_like(x), x.detach(), w.detach(), pooled, logits, v.padding, v.gate,
                           b is not None))


@needs_c
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
def test_compile_fullgraph_no_recompile(memory_format):
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          fused_attn.nn.EfficientChannelAttention(16, padding="circular"))
    block = block.to(memory_format=memory_format)
    compiled = torch.compile(block, fullgraph=True)
    with fused_attn.use_backend("cpu"):
        for step in range(3):
            x = torch.randn(2, 16, 9, 7).to(memory_format=memory_format).requires_grad_()
            with torch._dynamo.config.patch(error_on_recompile=step > 0):
                y = compiled(x)
            y_eager = block(x)
            assert_close(y, y_eager, torch.float32)
            params = [x] + list(block.parameters())
            dy = torch.randn_like(y)
            for g, g_eager in zip(torch.autograd.grad(y, params, dy), torch.autograd.grad(y_eager, params, dy), strict=True):
                assert_close(g, g_eager, torch.float32, grad=True)


# ---- modules -------------------------------------------------------------------

class OfficialEcaLayer(nn.Module):
    """BangguWu/ECANet ``models/eca_module.py`` ``eca_layer``, as published."""

    def __init__(self, channel, k_size=3):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        y = self.avg_pool(x)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        y = self.sigmoid(y)
        return x * y.expand_as(x)


def _originals():
    timm_eca = pytest.importorskip("timm.layers.eca")
    return [
        ("timm-eca-C", lambda: timm_eca.EcaModule(40)),
        ("timm-eca-k5", lambda: timm_eca.EcaModule(kernel_size=5)),
        ("timm-eca-hardsigmoid", lambda: timm_eca.EcaModule(kernel_size=3, gate_layer="hard_sigmoid")),
        ("timm-ceca-C", lambda: timm_eca.CecaModule(40)),
        ("timm-ceca-bias", lambda: timm_eca.CecaModule(kernel_size=7, act_layer=nn.ReLU)),
        ("official", lambda: OfficialEcaLayer(40, 5)),
    ]


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("index", range(6))
def test_from_module_matches_original(backend, index, memory_format):
    name, make = _originals()[index]
    torch.manual_seed(index)
    original = make().double()
    fused = fused_attn.nn.EfficientChannelAttention.from_module(original)
    assert set(fused.state_dict()) == set(original.state_dict()), name
    x = torch.randn(3, 40, 5, 6, dtype=torch.float64).to(memory_format=memory_format).requires_grad_()
    y_ref = original(x)
    y = fused(x)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    dy = torch.randn_like(y)
    params = [x] + list(original.parameters())
    # 1e-7, not 1e-9: ATen's CPU hardsigmoid_backward (the original's, with
    # gate_layer="hard_sigmoid") multiplies by a float32 1/6 even in float64.
    for g, g_ref in zip(torch.autograd.grad(y, params, dy), torch.autograd.grad(y_ref, params, dy), strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-7, rtol=1e-7)


def test_module_state_dict_is_timms():
    timm_eca = pytest.importorskip("timm.layers.eca")
    ours = fused_attn.nn.EfficientChannelAttention(256, padding="circular", bias=True)
    theirs = timm_eca.CecaModule(256, act_layer=nn.ReLU)
    theirs.load_state_dict(ours.state_dict())
    assert ours.kernel_size == theirs.conv.kernel_size[0] == 5


def test_from_module_refuses_the_mlp_variant():
    timm_eca = pytest.importorskip("timm.layers.eca")
    with pytest.raises(ValueError, match="use_mlp"):
        fused_attn.nn.EfficientChannelAttention.from_module(timm_eca.EcaModule(64, use_mlp=True))
