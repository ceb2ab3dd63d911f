"""fused_attn.nn.SqueezeExcite against the SE modules of timm and torchvision:
from_module equivalence (train and eval), state_dict round trips, refusals."""
import copy

import pytest
import torch
from torch import nn

import fused_attn
from fused_attn.nn import SqueezeExcite

from .utils import DTYPES, assert_close, cpu_backends

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
from timm.layers import EffectiveSEModule, SEModule  # noqa: E402
from timm.models._efficientnet_blocks import SqueezeExcite as EffNetSE  # noqa: E402
from timm.models.senet import SEModule as LegacySEModule  # noqa: E402
from torchvision.ops import SqueezeExcitation  # noqa: E402

C = 48


def _randomize(m, seed):
    """Random parameters and BatchNorm statistics (never the zero/one init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if not t.is_floating_point():
                continue
            r = torch.rand(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
            if name.endswith("running_var"):
                t.copy_(r + 0.5)
            else:
                fan_in = t[0].numel() if t.dim() > 1 else 1
                t.copy_((r - 0.5) * 2 / fan_in ** 0.5)
    return m


SOURCES = {
    "timm-se": lambda: SEModule(C),
    "timm-se-maxpool-nobias": lambda: SEModule(C, add_maxpool=True, bias=False, act_layer=nn.SiLU),
    "timm-se-rexnet-bn": lambda: SEModule(C, rd_channels=12, norm_layer=nn.BatchNorm2d),
    "timm-ese": lambda: EffectiveSEModule(C),
    "timm-ese-maxpool": lambda: EffectiveSEModule(C, add_maxpool=True, gate_layer="sigmoid"),
    "timm-effnet": lambda: EffNetSE(C, rd_ratio=0.25, act_layer=nn.SiLU),
    "timm-mnv3": lambda: EffNetSE(C, rd_ratio=0.25, gate_layer="hard_sigmoid"),
    "timm-gelu": lambda: SEModule(C, act_layer="gelu"),
    "timm-hardswish": lambda: SEModule(C, act_layer="hard_swish", gate_layer="hard_sigmoid"),
    "timm-legacy-senet": lambda: LegacySEModule(C, reduction=16),
    "torchvision": lambda: SqueezeExcitation(C, 12),
    "torchvision-mnv3": lambda: SqueezeExcitation(C, 16, scale_activation=nn.Hardsigmoid),
}


def _param_grads(m, x, dy):
    y = m(x)
    wrt = [x] + [p for p in m.parameters()]
    return y, torch.autograd.grad(y, wrt, dy)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
@pytest.mark.parametrize("source", list(SOURCES))
def test_from_module_matches_source(source, memory_format, training, backend):
    # float64: this checks that the structure is the same (the kernels' fp32
    # error is test_se's business), and train-mode BatchNorm makes fc1.bias's
    # gradient analytically zero, which only float64 resolves cleanly.
    src = _randomize(SOURCES[source](), seed=len(source)).double().train(training)
    fused = SqueezeExcite.from_module(copy.deepcopy(src))
    assert fused.training == training
    x = torch.randn(4, C, 9, 11, dtype=torch.float64).to(memory_format=memory_format).requires_grad_()
    dy = torch.randn(x.shape, dtype=torch.float64)
    y_src, g_src = _param_grads(src, x, dy)
    with fused_attn.use_backend(backend):
        y, g = _param_grads(fused, x, dy)
    assert y.is_contiguous(memory_format=memory_format)
    assert_close(y, y_src, torch.float64)
    assert len(g) == len(g_src)
    # The source modules' float64 gradients are ATen's, whose CPU
    # hardsigmoid_backward multiplies by a float32 1/6: 2e-8 relative.
    for a, b in zip(g, g_src, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7 * max(1.0, b.abs().max().item()))
    # BatchNorm running statistics move exactly as the source module's do.
    for (name, b_fused), (_, b_src) in zip(fused.named_buffers(), src.named_buffers(), strict=True):
        torch.testing.assert_close(b_fused, b_src, msg=name)


@pytest.mark.parametrize("source", list(SOURCES))
def test_from_module_shares_parameters_and_state_dict(source):
    src = SOURCES[source]()
    fused = SqueezeExcite.from_module(src)
    src_params = {id(p) for p in src.parameters()}
    assert {id(p) for p in fused.parameters()} == src_params


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_from_module_keeps_dtype_and_device(dtype):
    src = SEModule(C).to(dtype)
    fused = SqueezeExcite.from_module(src)
    assert all(p.dtype == dtype and p.device == src.fc1.weight.device for p in fused.parameters())
    x = torch.randn(2, C, 5, 5, dtype=dtype)
    assert fused(x).dtype == dtype


@pytest.mark.parametrize("make_src, make_fused", [
    (lambda: SEModule(C), lambda: SqueezeExcite(C)),
    (lambda: SEModule(C, bias=False, rd_channels=7), lambda: SqueezeExcite(C, 7, bias=False)),
    (lambda: SEModule(C, norm_layer=nn.BatchNorm2d), lambda: SqueezeExcite(C, norm_layer=nn.BatchNorm2d)),
    (lambda: EffectiveSEModule(C), lambda: SqueezeExcite(C, effective=True, gate="hard_sigmoid")),
    (lambda: SqueezeExcitation(C, 12), lambda: SqueezeExcite(C, 12)),
], ids=["timm-se", "timm-se-nobias", "timm-se-bn", "timm-ese", "torchvision"])
def test_state_dict_round_trip(make_src, make_fused):
    src, fused = _randomize(make_src(), 1).eval(), make_fused().eval()
    fused.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(2, C, 6, 6)
    assert_close(fused(x), src(x), torch.float32)
    back = _randomize(make_src(), 2).eval()
    back.load_state_dict(fused.state_dict(), strict=True)
    for (k, a), (k2, b) in zip(src.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_defaults_match_timm_widths():
    for channels in (16, 48, 256, 2048):
        assert SqueezeExcite(channels).fc1.out_channels == SEModule(channels).fc1.out_channels


@pytest.mark.parametrize("make, match", [
    (lambda: SqueezeExcitation(C, 8, activation=nn.Tanh), "unsupported activation .*Tanh"),
    (lambda: SqueezeExcitation(C, 8, scale_activation=nn.Softmax), "unsupported gate .*Softmax"),
    (lambda: SEModule(C, norm_layer=nn.LayerNorm), "cannot fuse norm layer LayerNorm"),
    (lambda: nn.Sequential(nn.Conv2d(C, C, 1)), "not a Squeeze-and-Excitation module"),
])
def test_from_module_refuses_what_it_cannot_represent(make, match):
    try:
        src = make()
    except Exception as exc:  # a source this timm version cannot even build
        pytest.skip(f"source module not constructible: {exc}")
    with pytest.raises((ValueError, TypeError), match=match):
        SqueezeExcite.from_module(src)


def test_from_module_refuses_non_pointwise_conv():
    src = SqueezeExcitation(C, 8)
    src.fc1 = nn.Conv2d(C, 8, 3, padding=1)
    with pytest.raises(ValueError, match="fc1 must be a 1x1 Conv2d"):
        SqueezeExcite.from_module(src)
