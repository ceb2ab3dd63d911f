"""``CBAM`` / ``LightCBAM``: drop-ins for timm ``CbamModule`` /
``LightCbamModule`` and the official CBAM (Jongchan/attention-module)."""
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.types import Device

from .. import functional as F_fa
from ..ops.cbam import MAX_SPATIAL_KERNEL, check_cbam_names
from ..reference.cbam import POOL_ORDERS
from ._activations import activation_name, gate_name
from ._torchscript import refuse_torchscript
from .se import _make_divisible


class _Part(nn.Module):
    """A plain container (timm's ChannelAttn / SpatialAttn / ConvNormAct
    layout, so parameter names match); never called."""

    def __init__(self, **children):
        super().__init__()
        for name, m in children.items():
            setattr(self, name, m)


class CBAM(nn.Module):
    """CBAM (channel then spatial attention) with fused kernels.

    ``x1 = x · gate(mlp(mean_hw x) + mlp(max_hw x))``,
    ``y = x1 · gate(bn(conv_kxk([mean_c x1, max_c x1])))``.

    Parameters carry timm's names (``channel.fc1.weight`` [rd, C, 1, 1],
    ``channel.fc2.weight``, ``spatial.conv.conv.weight`` [1, 2, k, k],
    ``spatial.conv.bn.*``), so a ``CbamModule``'s ``state_dict`` loads
    unchanged; ``from_module`` keeps the original module's own names (the
    official CBAM's ``ChannelGate.mlp.1.weight`` ...). The BatchNorm behaves
    as ``nn.BatchNorm2d``: batch statistics and a running-statistics update in
    training, running statistics in eval.
    """

    light = False

    __prepare_scriptable__ = refuse_torchscript

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: Optional[int] = None,
                 rd_divisor: int = 1, spatial_kernel_size: int = 7, *, act: str = "relu", gate: str = "sigmoid",
                 mlp_bias: bool = False, pool_order: str = "mean_max", device: Device = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        check_cbam_names(act, gate)
        if pool_order not in POOL_ORDERS:
            raise ValueError(f"pool_order must be one of {POOL_ORDERS}, got {pool_order!r}")
        k = spatial_kernel_size
        if k % 2 != 1 or k > MAX_SPATIAL_KERNEL:
            raise ValueError(f"spatial_kernel_size must be odd and at most {MAX_SPATIAL_KERNEL}, got {k}")
        if not rd_channels:
            rd_channels = _make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.act, self.gate, self.pool_order = act, gate, pool_order
        self.channel = _Part(fc1=nn.Conv2d(channels, rd_channels, 1, bias=mlp_bias, **dd),
                             fc2=nn.Conv2d(rd_channels, channels, 1, bias=mlp_bias, **dd))
        maps = 1 if self.light else 2
        self.spatial = _Part(conv=_Part(conv=nn.Conv2d(maps, 1, k, padding=(k - 1) // 2, bias=False, **dd),
                                        bn=nn.BatchNorm2d(1, **dd)))

    #: Role → dotted path of the submodule playing it (from_module keeps the
    #: original module's layout, so its state_dict keys stay the original's).
    _paths = {"fc1": "channel.fc1", "fc2": "channel.fc2", "conv": "spatial.conv.conv", "bn": "spatial.conv.bn"}

    def part(self, role):
        m: Optional[nn.Module] = self
        for name in self._paths[role].split("."):
            m = m._modules[name]  # type: ignore[union-attr]  # every path is set by __init__ / from_module
        return m

    def extra_repr(self):
        return f"act={self.act!r}, gate={self.gate!r}, pool_order={self.pool_order!r}, light={self.light}"

    def forward(self, x: Tensor) -> Tensor:
        fc1, fc2, conv, bn = self.part("fc1"), self.part("fc2"), self.part("conv"), self.part("bn")
        return F_fa.cbam(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, conv.weight, bn_weight=bn.weight,
                         bn_bias=bn.bias, bn_running_mean=bn.running_mean, bn_running_var=bn.running_var,
                         bn_num_batches_tracked=bn.num_batches_tracked, bn_training=bn.training,
                         bn_momentum=bn.momentum, bn_eps=bn.eps, act=self.act, gate=self.gate, light=self.light,
                         pool_order=self.pool_order)

    @classmethod
    def from_module(cls, m: nn.Module) -> "CBAM":
        """An equivalent fused module sharing ``m``'s parameters and buffers
        under ``m``'s own attribute names.

        Accepts timm ``CbamModule`` (→ ``CBAM``), ``LightCbamModule`` (→
        ``LightCBAM``; call either class) and the official ``CBAM``
        (``ChannelGate`` / ``SpatialGate``). Raises ``TypeError`` when ``m``
        is not a CBAM layout, ``ValueError`` naming what it cannot represent.
        """
        fields = _describe(m)
        target = LightCBAM if fields["light"] else CBAM
        if cls is LightCBAM and not fields["light"]:
            target = CBAM
        fused = target.__new__(target)
        nn.Module.__init__(fused)
        fused.act, fused.gate, fused.pool_order = fields["act"], fields["gate"], fields["pool_order"]
        for name, child in m.named_children():
            setattr(fused, name, child)
        if fields["paths"] != CBAM._paths:
            fused._paths = fields["paths"]
        fused.train(m.training)
        return fused


class LightCBAM(CBAM):
    """timm ``LightCbamModule``: the channel MLP on 0.5·mean + 0.5·max (one
    pass, sigmoid gate), the spatial conv on the 1-channel map 0.5·mean_c +
    0.5·max_c."""

    light = True


def _kind(m):
    return f"{type(m).__module__}.{type(m).__qualname__}"


def _check_bn(bn, owner):
    if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != 1:
        raise ValueError(f"{owner}: the spatial gate's norm must be BatchNorm2d(1), got {bn}")
    for extra in ("act", "drop"):   # timm BatchNormAct2d: both must be Identity
        sub = getattr(bn, extra, None)
        if sub is not None and not isinstance(sub, nn.Identity):
            raise ValueError(f"{owner}: the spatial gate's norm has an {extra} layer ({sub}); fused_attn fuses a "
                             "plain BatchNorm")


def _check_conv(conv, maps, owner):
    k = conv.kernel_size[0] if isinstance(conv, nn.Conv2d) else 0
    ok = (isinstance(conv, nn.Conv2d) and conv.in_channels == maps and conv.out_channels == 1
          and conv.kernel_size == (k, k) and k % 2 == 1 and k <= MAX_SPATIAL_KERNEL and conv.stride == (1, 1)
          and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is None
          and conv.padding == ((k - 1) // 2,) * 2 and conv.padding_mode == "zeros")
    if not ok:
        raise ValueError(f"{owner}: the spatial conv must be Conv2d({maps}, 1, k odd ≤ {MAX_SPATIAL_KERNEL}, "
                         f"stride 1, 'same' zero padding, no bias), got {conv}")


def _check_fc(fc1, fc2, owner, linear):
    kind = nn.Linear if linear else nn.Conv2d
    ok = isinstance(fc1, kind) and isinstance(fc2, kind)
    if ok and not linear:
        ok = all(c.kernel_size == (1, 1) and c.stride == (1, 1) and c.padding in ((0, 0), "valid")
                 and c.dilation == (1, 1) and c.groups == 1 for c in (fc1, fc2))
    if not ok:
        raise ValueError(f"{owner}: the channel MLP must be two {'Linear' if linear else '1×1 Conv2d'} layers, "
                         f"got {fc1} and {fc2}")


def _describe(m):
    """act / gate / pool order / light, and the paths of the parts of a CBAM."""
    owner = _kind(m)
    if isinstance(m, CBAM):
        return {"act": m.act, "gate": m.gate, "pool_order": m.pool_order, "light": m.light, "paths": dict(m._paths)}
    names = set(dict(m.named_children()))
    if {"channel", "spatial"} <= names:                                        # timm CbamModule / LightCbamModule
        ch, sp = m.channel, m.spatial
        if not ({"fc1", "fc2", "act"} <= set(dict(ch.named_children())) and hasattr(sp, "conv")):
            raise TypeError(f"{owner}: 'channel' / 'spatial' are not timm's CBAM attention layers")
        light = type(ch).__name__ == "LightChannelAttn" or type(sp).__name__ == "LightSpatialAttn"
        if light != (type(ch).__name__ == "LightChannelAttn" and type(sp).__name__ == "LightSpatialAttn"):
            raise ValueError(f"{owner}: mixes light and full CBAM parts ({type(ch).__name__}, {type(sp).__name__})")
        _check_fc(ch.fc1, ch.fc2, owner, linear=False)
        _check_conv(sp.conv.conv, 1 if light else 2, owner)
        _check_bn(sp.conv.bn, owner)
        act = activation_name(ch.act, owner)
        gate = gate_name(sp.gate, owner)
        if not light and gate_name(ch.gate, owner) != gate:
            raise ValueError(f"{owner}: the channel and spatial gates differ ({ch.gate}, {sp.gate})")
        return {"act": act, "gate": gate, "pool_order": "mean_max", "light": light,
                "paths": {"fc1": "channel.fc1", "fc2": "channel.fc2", "conv": "spatial.conv.conv",
                          "bn": "spatial.conv.bn"}}
    if {"ChannelGate"} <= names:                                               # the official CBAM
        if getattr(m, "no_spatial", False) or "SpatialGate" not in names:
            raise ValueError(f"{owner}: CBAM without its spatial gate (no_spatial=True) is a channel gate only; "
                             "fused_attn fuses the full block")
        cg, sg = m.ChannelGate, m.SpatialGate
        mlp = getattr(cg, "mlp", None)
        pools = list(getattr(cg, "pool_types", ["avg", "max"]))
        if pools != ["avg", "max"]:
            raise ValueError(f"{owner}: pool_types {pools}; fused_attn fuses ['avg', 'max']")
        if not (isinstance(mlp, nn.Sequential) and len(mlp) == 4 and isinstance(mlp[0], nn.Flatten)):
            raise ValueError(f"{owner}: ChannelGate.mlp must be Sequential(Flatten, Linear, act, Linear), got {mlp}")
        _check_fc(mlp[1], mlp[3], owner, linear=True)
        act = activation_name(mlp[2], owner)
        spatial = getattr(sg, "spatial", None)
        if spatial is None or getattr(spatial, "bn", None) is None or getattr(spatial, "relu", None) is not None:
            raise ValueError(f"{owner}: SpatialGate.spatial must be BasicConv(2, 1, k, relu=False, bn=True)")
        _check_conv(spatial.conv, 2, owner)
        _check_bn(spatial.bn, owner)
        return {"act": act, "gate": "sigmoid", "pool_order": "max_mean", "light": False,
                "paths": {"fc1": "ChannelGate.mlp.1", "fc2": "ChannelGate.mlp.3", "conv": "SpatialGate.spatial.conv",
                          "bn": "SpatialGate.spatial.bn"}}
    raise TypeError(f"{owner} is not a CBAM module fused_attn knows (children: {sorted(names)})")
