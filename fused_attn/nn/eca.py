"""``EfficientChannelAttention``: a drop-in for timm ``EcaModule`` /
``CecaModule`` and the official ECANet ``eca_layer``."""
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.types import Device

from .. import functional as F_fa
from ..ops.eca import check_eca_names
from ..reference.eca import eca_kernel_size
from ._activations import gate_name
from ._torchscript import refuse_torchscript


class EfficientChannelAttention(nn.Module):
    """Efficient Channel Attention with fused kernels.

    ``y = x * gate(conv1d(pad(mean_hw(x))))``: a 1-D convolution of odd size k
    across the channels of the pooled vector, zero-padded (timm ``EcaModule``,
    the official ``eca_layer``) or circular (timm ``CecaModule``).

    ``channels`` given: k is chosen from C as timm and the ECA paper do
    (:func:`fused_attn.reference.eca_kernel_size`); else ``kernel_size``.
    The parameter is ``conv.weight`` [1, 1, k] (and ``conv.bias`` [1] when
    ``bias``), as in timm, so their ``state_dict`` loads unchanged.
    """

    __prepare_scriptable__ = refuse_torchscript

    def __init__(self, channels: Optional[int] = None, kernel_size: int = 3, gamma: float = 2, beta: float = 1, *,
                 padding: str = "zeros", gate: str = "sigmoid", bias: bool = False, device: Device = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        check_eca_names(padding, gate)
        if channels is not None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.padding, self.gate = padding, gate
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=0, bias=bias, device=device, dtype=dtype)

    @property
    def kernel_size(self) -> int:
        return self.conv.kernel_size[0]

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, padding={self.padding!r}, gate={self.gate!r}"

    def forward(self, x: Tensor) -> Tensor:
        return F_fa.efficient_channel_attention(x, self.conv.weight, self.conv.bias, padding=self.padding,
                                                gate=self.gate)

    @classmethod
    def from_module(cls, m: nn.Module) -> "EfficientChannelAttention":
        """An equivalent fused module sharing ``m``'s parameters.

        Accepts timm ``EcaModule`` (without its experimental ``use_mlp``),
        timm ``CecaModule`` and the official ECANet ``eca_layer``. Raises
        ``TypeError`` / ``ValueError`` naming what it cannot represent.
        """
        kind = f"{type(m).__module__}.{type(m).__qualname__}"
        names = set(dict(m.named_children()))
        conv: Any  # any module here: _check_conv below says what it must be
        if isinstance(m, EfficientChannelAttention):
            conv, padding, gate = m.conv, m.padding, m.gate
        elif {"conv", "gate"} <= names and hasattr(m, "padding") and not isinstance(m.padding, nn.Module):
            conv, gate = m.conv, gate_name(m.gate, kind)                   # timm CecaModule
            padding = "circular"
            if conv.padding != (0,) or m.padding != (conv.kernel_size[0] - 1) // 2:
                raise ValueError(f"{kind}: expected circular padding (k - 1) // 2 outside an unpadded conv, "
                                 f"got conv.padding={conv.padding}, padding={m.padding}")
        elif {"conv", "gate"} <= names:                                    # timm EcaModule
            if getattr(m, "conv2", None) is not None:
                raise ValueError(f"{kind}: the use_mlp variant (conv, act, conv2) is not ECA's 1-D conv; "
                                 "fused_attn does not fuse it")
            conv, gate, padding = m.conv, gate_name(m.gate, kind), "zeros"
        elif {"avg_pool", "conv", "sigmoid"} <= names:                     # official eca_layer
            pool = m.avg_pool
            if not (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))):
                raise ValueError(f"{kind}: avg_pool must be AdaptiveAvgPool2d(1), got {pool}")
            conv, gate, padding = m.conv, gate_name(m.sigmoid, kind), "zeros"
        else:
            raise TypeError(f"{kind} is not an ECA module fused_attn knows (children: {sorted(names)})")
        _check_conv(conv, kind, zero_padded=padding == "zeros" and not isinstance(m, EfficientChannelAttention))
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.padding, fused.gate = padding, gate
        fused.conv = conv
        fused.train(m.training)
        return fused


def _check_conv(conv, kind, zero_padded):
    ok = False
    if isinstance(conv, nn.Conv1d):
        k = conv.kernel_size[0]
        want = ((k - 1) // 2,) if zero_padded else (0,)
        ok = (conv.in_channels == 1 and conv.out_channels == 1 and k % 2 == 1 and conv.stride == (1,)
              and conv.dilation == (1,) and conv.groups == 1 and conv.padding == want
              and conv.padding_mode == "zeros")
    if not ok:
        raise ValueError(f"{kind}: conv must be Conv1d(1, 1, k odd, stride 1, no dilation) with 'same' zero "
                         f"padding (or none, outside the circular pad), got {conv}")
