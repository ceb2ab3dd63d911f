"""The CBAM reference (the oracle the fused CBAM kernels will be tested
against) computes what timm's CbamModule / LightCbamModule and the official
CBAM compute: outputs, every gradient and the BatchNorm's running statistics,
in train and eval mode, spatial kernels 3 and 7, ties in the max pools."""
import copy

import pytest
import torch
from torch import nn

import fused_attn

timm_cbam = pytest.importorskip("timm.layers.cbam")


# The official implementation (Jongchan/attention-module, MODELS/cbam.py), as
# published, minus the unused pool types.
class BasicConv(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size, padding):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=1, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01, affine=True)

    def forward(self, x):
        return self.bn(self.conv(x))


class ChannelGate(nn.Module):
    def __init__(self, gate_channels, reduction_ratio=16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(gate_channels, gate_channels // reduction_ratio), nn.ReLU(),
                                 nn.Linear(gate_channels // reduction_ratio, gate_channels))

    def forward(self, x):
        avg = nn.functional.avg_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
        mx = nn.functional.max_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
        scale = torch.sigmoid(self.mlp(avg) + self.mlp(mx)).unsqueeze(2).unsqueeze(3).expand_as(x)
        return x * scale


class SpatialGate(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.spatial = BasicConv(2, 1, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x):
        compressed = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
        return x * torch.sigmoid(self.spatial(compressed))


class OfficialCBAM(nn.Module):
    def __init__(self, gate_channels, reduction_ratio=16, kernel_size=7):
        super().__init__()
        self.ChannelGate = ChannelGate(gate_channels, reduction_ratio)
        self.SpatialGate = SpatialGate(kernel_size)

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


def _randomize_bn(bn, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(1, generator=g, dtype=torch.float64) * 0.3)
        bn.running_var.copy_(torch.rand(1, generator=g, dtype=torch.float64) + 0.5)
        bn.weight.copy_(torch.rand(1, generator=g, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(1, generator=g, dtype=torch.float64) * 0.2)


def _timm_reference(m, x, light):
    ch, sp = m.channel, m.spatial
    bn = sp.conv.bn
    return fused_attn.reference.cbam(
        x, ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, sp.conv.conv.weight, bn_weight=bn.weight,
        bn_bias=bn.bias, bn_running_mean=bn.running_mean, bn_running_var=bn.running_var,
        bn_num_batches_tracked=bn.num_batches_tracked, bn_training=bn.training,
        bn_momentum=bn.momentum, bn_eps=bn.eps, light=light, pool_order="mean_max")


def _official_reference(m, x):
    mlp, sp = m.ChannelGate.mlp, m.SpatialGate.spatial
    return fused_attn.reference.cbam(
        x, mlp[1].weight, mlp[1].bias, mlp[3].weight, mlp[3].bias, sp.conv.weight, bn_weight=sp.bn.weight,
        bn_bias=sp.bn.bias, bn_running_mean=sp.bn.running_mean, bn_running_var=sp.bn.running_var,
        bn_num_batches_tracked=sp.bn.num_batches_tracked,
        bn_training=sp.bn.training, bn_momentum=sp.bn.momentum, bn_eps=sp.bn.eps, pool_order="max_mean")


def _compare(module, reference_fn, x, train):
    """Forward, every gradient and the running statistics of ``module`` and
    of the reference fed the same parameters (on a copy of the module)."""
    module = module.double().train(train)
    twin = copy.deepcopy(module)
    x = x.double()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = module(xa)
    y_ref = reference_fn(twin, xb)
    torch.testing.assert_close(y_ref, y, atol=1e-12, rtol=1e-10)
    dy = torch.randn_like(y)
    params, params_ref = [xa] + list(module.parameters()), [xb] + list(twin.parameters())
    for g_ref, g in zip(torch.autograd.grad(y_ref, params_ref, dy), torch.autograd.grad(y, params, dy), strict=True):
        torch.testing.assert_close(g_ref, g, atol=1e-10, rtol=1e-9)
    for (name, b), b_ref in zip(module.named_buffers(), twin.buffers(), strict=True):
        torch.testing.assert_close(b_ref, b, atol=1e-12, rtol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kernel", [3, 7])
@pytest.mark.parametrize("light", [False, True], ids=["cbam", "light"])
def test_matches_timm(train, kernel, light):
    torch.manual_seed(kernel)
    cls = timm_cbam.LightCbamModule if light else timm_cbam.CbamModule
    m = cls(32, rd_ratio=1 / 8, spatial_kernel_size=kernel, mlp_bias=light)
    _randomize_bn(m.spatial.conv.bn, kernel)
    x = torch.randn(3, 32, 9, 11)
    _compare(m, lambda twin, xb: _timm_reference(twin, xb, light), x, train)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kernel", [3, 7])
def test_matches_the_official_cbam(train, kernel):
    torch.manual_seed(kernel + 1)
    m = OfficialCBAM(32, reduction_ratio=8, kernel_size=kernel)
    _randomize_bn(m.SpatialGate.spatial.bn, kernel)
    x = torch.randn(2, 32, 8, 8)
    _compare(m, _official_reference, x, train)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_ties_in_both_max_pools(train):
    """Integer-valued x: ties in the spatial max of each channel and in the
    channel max of each pixel; the gradient is split among tied maxima as
    torch.amax's is (timm uses amax in both places)."""
    torch.manual_seed(5)
    m = timm_cbam.CbamModule(16, rd_ratio=1 / 4, spatial_kernel_size=3)
    _randomize_bn(m.spatial.conv.bn, 5)
    x = torch.randint(-2, 3, (2, 16, 6, 6)).double()
    _compare(m, lambda twin, xb: _timm_reference(twin, xb, False), x, train)


def test_low_precision_accumulates_in_float32():
    """bf16 x: the reference pools and runs the MLP and the spatial map in
    float32 and rounds twice (x1 and y), landing within bf16 rounding of the
    float64 result."""
    torch.manual_seed(0)
    m = timm_cbam.CbamModule(32, rd_ratio=1 / 8).eval()
    _randomize_bn(m.spatial.conv.bn, 0)
    x = torch.randn(2, 32, 7, 7)
    y64 = _timm_reference(copy.deepcopy(m).double(), x.double(), False)
    mb = copy.deepcopy(m).to(torch.bfloat16)
    y = _timm_reference(mb, x.to(torch.bfloat16), False)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), y64, atol=3e-2, rtol=3e-2)


def test_cumulative_average_momentum_none():
    """nn.BatchNorm2d(momentum=None) averages over all batches seen."""
    torch.manual_seed(3)
    m = timm_cbam.CbamModule(16, rd_ratio=1 / 4, spatial_kernel_size=3)
    m.spatial.conv.bn.momentum = None
    for _ in range(3):
        _compare(m, lambda twin, xb: _timm_reference(twin, xb, False), torch.randn(2, 16, 5, 5), True)
