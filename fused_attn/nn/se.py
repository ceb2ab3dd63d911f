"""``SqueezeExcite``: a drop-in for the SE modules of timm and torchvision."""
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.types import Device

from .. import functional as F_fa
from .. import reference
from ._activations import activation_name, gate_name
from ._torchscript import refuse_torchscript


def _make_divisible(v, divisor=8, min_value=None, round_limit=0.0):
    # timm's rule for the reduced width (timm.layers.make_divisible).
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def _is_pointwise(conv):
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1) and conv.groups == 1)


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation with fused kernels.

    ``y = x * gate(fc2(act(bn(fc1(pool(x))))))``, or ``y = x * gate(fc(pool(x)))``
    for ``effective=True`` (timm ``EffectiveSEModule``).

    Parameters carry timm's / torchvision's names (``fc1.weight`` [rd, C, 1, 1],
    ``fc1.bias``, ``bn.*``, ``fc2.*``; ``fc.*`` for the effective variant), so
    their ``state_dict`` loads unchanged.

    A BatchNorm between fc1 and the activation (timm rexnet) is folded into fc1
    in eval mode and keeps the fused path; in training mode it needs batch
    statistics of the whole batch before any sample can be gated, so that case
    runs the eager reference (correct, updates running stats, not fused).
    """

    __prepare_scriptable__ = refuse_torchscript

    def __init__(self, channels: int, rd_channels: Optional[int] = None, *, rd_ratio: float = 1.0 / 16,
                 rd_divisor: int = 8, bias: bool = True, act: str = "relu", gate: str = "sigmoid", pool: str = "avg",
                 effective: bool = False, norm_layer: Optional[Callable[..., nn.Module]] = None,
                 device: Device = None, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        F_fa._se.check_names(act, gate, pool)
        self.act, self.gate, self.pool, self.effective = act, gate, pool, effective
        if effective:
            self.fc = nn.Conv2d(channels, channels, 1, bias=bias, **dd)
            return
        if not rd_channels:
            rd_channels = _make_divisible(channels * rd_ratio, rd_divisor)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=bias, **dd)
        self.bn = norm_layer(rd_channels, **dd) if norm_layer is not None else None
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=bias, **dd)

    #: Role ("fc", "fc1", "bn", "fc2") → attribute name, where from_module kept
    #: the original module's names (timm's EfficientNet SE: conv_reduce,
    #: conv_expand), so the state_dict keys stay the original's.
    _roles: dict[str, str] = {}

    def part(self, role):
        """The submodule playing ``role`` ("fc", "fc1", "bn", "fc2"), or None."""
        return self._modules.get(self._roles.get(role, role))

    def extra_repr(self):
        return f"act={self.act!r}, gate={self.gate!r}, pool={self.pool!r}, effective={self.effective}"

    def _fc1(self):
        """fc1's weight and bias with an eval-mode BatchNorm folded in."""
        fc1 = self.part("fc1")
        w, b = fc1.weight.flatten(1), fc1.bias
        bn = self.part("bn")
        if bn is None:
            return w, b
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else torch.rsqrt(bn.running_var + bn.eps)
        shift = (b - bn.running_mean) * scale if b is not None else -bn.running_mean * scale
        if bn.affine:
            shift = shift + bn.bias
        return w * scale[:, None], shift

    def forward(self, x: Tensor) -> Tensor:
        if self.effective:
            fc = self.part("fc")
            return F_fa.squeeze_excitation(x, fc.weight, fc.bias, gate=self.gate, pool=self.pool)
        bn, fc1, fc2 = self.part("bn"), self.part("fc1"), self.part("fc2")
        if bn is not None and (bn.training or not bn.track_running_stats):
            return reference.squeeze_excitation(
                x, fc1.weight, fc1.bias, fc2.weight, fc2.bias,
                act=self.act, gate=self.gate, pool=self.pool, norm=bn)
        w1, b1 = self._fc1()
        return F_fa.squeeze_excitation(x, w1, b1, fc2.weight, fc2.bias,
                                       act=self.act, gate=self.gate, pool=self.pool)

    @classmethod
    def from_module(cls, m: nn.Module) -> "SqueezeExcite":
        """An equivalent fused module sharing ``m``'s parameters (and buffers),
        under ``m``'s own attribute names, so its ``state_dict`` has ``m``'s keys.

        Accepts timm ``SEModule`` (also rexnet's, with BatchNorm),
        ``EffectiveSEModule`` and HGNet's ``EseModule``, timm's EfficientNet / MobileNetV3
        ``SqueezeExcite``, timm's legacy senet ``SEModule`` and torchvision
        ``ops.SqueezeExcitation``. Raises ``TypeError`` / ``ValueError``
        naming what it cannot represent exactly.
        """
        fields = _describe(m)
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.act, fused.gate, fused.pool = fields["act"], fields["gate"], fields["pool"]
        fused.effective = "fc" in fields
        roles = {}
        for role in ("fc", "fc1", "bn", "fc2"):
            if role in fields:
                name = fields["names"].get(role, role)
                setattr(fused, name, fields[role])
                if name != role:
                    roles[role] = name
        if roles:
            fused._roles = roles
        fused.train(m.training)
        return fused


def _pool_of(m):
    return "avgmax" if getattr(m, "add_maxpool", False) else "avg"


def _describe(m):
    """The parts of a known SE module: convs, norm, act / gate / pool names."""
    kind = f"{type(m).__module__}.{type(m).__qualname__}"
    out: dict[str, Any]
    if isinstance(m, SqueezeExcite):
        out = {"act": m.act, "gate": m.gate, "pool": m.pool, "names": dict(m._roles)}
        roles = ("fc",) if m.effective else ("fc1", "bn", "fc2")
        out.update({role: m.part(role) for role in roles})
        return out
    names = set(dict(m.named_children()))
    linear = [n for n in ("fc", "fc1", "fc2") if n in names and isinstance(getattr(m, n), nn.Linear)]
    if linear:
        # The SE layouts here act on NCHW through 1x1 convs; the same child
        # names around Linear layers are an MLP over the last dimension
        # (timm's gMLP GatedMlp, SqueezeExciteCl on NHWC tensors), another
        # family whatever its activations are. (Any other module in a conv's
        # place, a wrapped conv say, is this family and refused below.)
        raise TypeError(f"{kind} is not a Squeeze-and-Excitation module fused_attn knows "
                        f"({', '.join(linear)}: Linear, not 1x1 Conv2d)")
    if kind == "timm.models.hgnet.EseModule":                      # timm HGNet / HGNetV2: effective SE, sigmoid
        out = {"fc": m.conv, "act": "relu", "gate": gate_name(m.sigmoid, kind), "pool": "avg",
               "names": {"fc": "conv"}}
    elif {"fc1", "fc2", "act", "gate"} <= names:                     # timm SEModule
        out = {"fc1": m.fc1, "fc2": m.fc2, "act": activation_name(m.act, kind),
               "gate": gate_name(m.gate, kind), "pool": _pool_of(m)}
        bn = getattr(m, "bn", None)
        if bn is not None and not isinstance(bn, nn.Identity):
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
                raise TypeError(f"{kind}: cannot fuse norm layer {type(bn).__name__}; only BatchNorm folds into fc1")
            out["bn"] = bn
        else:
            out["bn"] = None
    elif {"fc", "gate"} <= names and "fc1" not in names:          # timm EffectiveSEModule
        out = {"fc": m.fc, "act": "relu", "gate": gate_name(m.gate, kind), "pool": _pool_of(m)}
    elif {"conv_reduce", "act1", "conv_expand", "gate"} <= names:  # timm EfficientNet / MobileNetV3
        out = {"fc1": m.conv_reduce, "fc2": m.conv_expand, "bn": None, "act": activation_name(m.act1, kind),
               "gate": gate_name(m.gate, kind), "pool": "avg",
               "names": {"fc1": "conv_reduce", "fc2": "conv_expand"}}
    elif {"avgpool", "fc1", "fc2", "activation", "scale_activation"} <= names:  # torchvision
        if not (isinstance(m.avgpool, nn.AdaptiveAvgPool2d) and m.avgpool.output_size in (1, (1, 1))):
            raise ValueError(f"{kind}: avgpool must be AdaptiveAvgPool2d(1), got {m.avgpool}")
        out = {"fc1": m.fc1, "fc2": m.fc2, "bn": None, "act": activation_name(m.activation, kind),
               "gate": gate_name(m.scale_activation, kind), "pool": "avg"}
    elif {"fc1", "relu", "fc2", "sigmoid"} <= names:                # timm legacy senet SEModule
        out = {"fc1": m.fc1, "fc2": m.fc2, "bn": None, "act": activation_name(m.relu, kind),
               "gate": gate_name(m.sigmoid, kind), "pool": "avg"}
    else:
        raise TypeError(f"{kind} is not a Squeeze-and-Excitation module fused_attn knows "
                        f"(children: {sorted(names)})")
    out.setdefault("names", {})
    for conv_name in ("fc", "fc1", "fc2"):
        if conv_name in out and not _is_pointwise(out[conv_name]):
            raise ValueError(f"{kind}: {conv_name} must be a 1x1 Conv2d with stride 1, no padding, "
                             f"no dilation and groups=1, got {out[conv_name]}")
    return out
