"""Efficient Channel Attention in eager PyTorch: timm ``EcaModule`` and the
official ``eca_layer`` (zero padding), timm ``CecaModule`` (circular padding,
optional conv bias).

    p = mean_hw(x)                               # [N, C]
    z = conv1d(pad(p), w, b)                     # across channels, kernel k, 'same' size
    y = x · gate(z)[:, :, None, None]
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F

from .se import GATES

#: How the channel axis is padded for the 1-D convolution.
PADDINGS = ("zeros", "circular")


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """The kernel size ECA picks from C (timm ``EcaModule`` / ``CecaModule``
    with ``channels`` given): t = int(|log2(C) + beta| / gamma), made odd
    (t + 1 when even), at least 3."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


def pad_channels(p, pad, padding):
    """p [N, C] padded by ``pad`` on both ends of C: zeros, or wrapped around
    (index (c - pad) mod C, which equals F.pad(mode='circular') whenever
    pad <= C and stays defined when C is smaller than the kernel)."""
    if padding == "zeros":
        return F.pad(p, (pad, pad))
    if padding == "circular":
        C = p.shape[1]
        idx = (torch.arange(C + 2 * pad, device=p.device) - pad) % C
        return p[:, idx]
    raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def efficient_channel_attention(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor] = None,
                                *, padding: str = "zeros", gate: str = "sigmoid") -> torch.Tensor:
    """y = x · gate(conv1d(pad(mean_hw(x)), conv_weight, conv_bias)).

    x: [N, C, H, W]; conv_weight: [k] or [1, 1, k] with k odd; conv_bias: [1]
    or None. Pooling and the convolution run in float32 (float64 for float64
    x); y is rounded to x's dtype once.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = conv_weight.reshape(-1).to(acc)
    k = w.shape[0]
    p = x.mean((2, 3), dtype=acc)
    pp = pad_channels(p, (k - 1) // 2, padding)
    z = F.conv1d(pp[:, None, :], w.view(1, 1, k), None if conv_bias is None else conv_bias.reshape(1).to(acc))
    return (x * GATES[gate](z[:, 0, :])[:, :, None, None]).to(x.dtype)
