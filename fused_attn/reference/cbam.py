"""CBAM (channel + spatial attention) in eager PyTorch: timm ``CbamModule`` /
``LightCbamModule`` and the official ``CBAM`` (Jongchan/attention-module).

    channel gate:   x1 = x · gate(mlp(mean_hw x) + mlp(max_hw x))            (full)
                    x1 = x · sigmoid(mlp(0.5·mean_hw x + 0.5·max_hw x))      (light; timm hard-codes sigmoid)
    spatial gate:   m  = [mean_c x1, max_c x1]  (timm)  or  [max_c x1, mean_c x1]  (official)
                         0.5·mean_c x1 + 0.5·max_c x1                          (light: one channel)
                    y  = x1 · gate(bn(conv_kxk(m)))

mlp(v) = fc2(act(fc1(v))); the k×k convolution has no bias and 'same'
padding (k odd); bn is a BatchNorm over the 1-channel map: running
statistics in eval mode, batch statistics (and an update of the running ones,
as ``nn.BatchNorm2d`` does) in training mode.

The oracle for the fused CBAM kernels (issue 5, not written yet). Pooling,
the MLP and the spatial map are computed in float32 (float64 for float64 x);
x1 and y are rounded to x's dtype once each, as the two multiplies of the
modules are.
"""
from typing import Optional

import torch
from torch import Tensor
import torch.nn.functional as F

from .se import ACTIVATIONS, GATES

#: Channel order of the spatial gate's 2-channel map: timm's or the official one.
POOL_ORDERS = ("mean_max", "max_mean")


def _mlp(v, w1, b1, w2, b2, act):
    return F.linear(ACTIVATIONS[act](F.linear(v, w1, b1)), w2, b2)


def cbam(x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor, fc2_bias: Optional[Tensor],
         spatial_weight: Tensor, *, bn_weight: Optional[Tensor] = None, bn_bias: Optional[Tensor] = None,
         bn_running_mean: Optional[Tensor] = None, bn_running_var: Optional[Tensor] = None,
         bn_num_batches_tracked: Optional[Tensor] = None, bn_training: bool = False,
         bn_momentum: Optional[float] = 0.1, bn_eps: float = 1e-5, act: str = "relu", gate: str = "sigmoid",
         light: bool = False, pool_order: str = "mean_max", x1_dtype: Optional[torch.dtype] = None) -> Tensor:
    """y = spatial_gate(channel_gate(x)).

    x: [N, C, H, W]. fc1_weight: [rd, C] (or [rd, C, 1, 1]), fc1_bias [rd] or
    None; fc2_weight: [C, rd], fc2_bias [C] or None. spatial_weight:
    [1, 2, k, k] ([1, 1, k, k] when ``light``), k odd. The BatchNorm: affine
    ``bn_weight`` / ``bn_bias`` ([1] or None), running statistics
    ``bn_running_mean`` / ``bn_running_var`` ([1]; updated in place when
    ``bn_training``; without them, batch statistics always) and
    ``bn_num_batches_tracked`` (incremented in training; with
    ``bn_momentum=None`` the update is the cumulative average), as
    ``nn.BatchNorm2d`` keeps them.
    """
    if pool_order not in POOL_ORDERS:
        raise ValueError(f"pool_order must be one of {POOL_ORDERS}, got {pool_order!r}")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w1, w2 = fc1_weight.flatten(1).to(acc), fc2_weight.flatten(1).to(acc)
    b1 = None if fc1_bias is None else fc1_bias.to(acc)
    b2 = None if fc2_bias is None else fc2_bias.to(acc)
    mean = x.mean((2, 3), dtype=acc)
    mx = x.amax((2, 3)).to(acc)
    if light:
        g = torch.sigmoid(_mlp(0.5 * mean + 0.5 * mx, w1, b1, w2, b2, act))
    else:
        g = GATES[gate](_mlp(mean, w1, b1, w2, b2, act) + _mlp(mx, w1, b1, w2, b2, act))
    x1 = (x * g[:, :, None, None]).to(x.dtype)
    if x1_dtype is not None and x1_dtype != x.dtype:
        # via float32, as the kernels form x·g in float32 before rounding it
        x1 = x1 + (x1.detach().float().to(x1_dtype).to(x.dtype) - x1.detach())

    c_mean = x1.mean(1, keepdim=True, dtype=acc)
    c_max = x1.amax(1, keepdim=True).to(acc)
    if light:
        m = 0.5 * c_mean + 0.5 * c_max
    else:
        m = torch.cat([c_mean, c_max] if pool_order == "mean_max" else [c_max, c_mean], dim=1)
    k = spatial_weight.shape[-1]
    z = F.conv2d(m, spatial_weight.to(acc), padding=(k - 1) // 2)
    # The BatchNorm in the accumulation dtype, on copies of the running
    # statistics that are written back (whatever dtype the module keeps them in).
    training = bn_training or bn_running_mean is None
    momentum = bn_momentum
    if bn_training and bn_num_batches_tracked is not None:
        with torch.no_grad():
            bn_num_batches_tracked.add_(1)
        if momentum is None:
            momentum = 1.0 / float(bn_num_batches_tracked)
    rm = None if bn_running_mean is None else bn_running_mean.detach().to(acc, copy=True)
    rv = None if bn_running_var is None else bn_running_var.detach().to(acc, copy=True)
    z = F.batch_norm(z, rm, rv, None if bn_weight is None else bn_weight.to(acc),
                     None if bn_bias is None else bn_bias.to(acc), training=training, momentum=momentum or 0.0,
                     eps=bn_eps)
    if training:
        with torch.no_grad():
            if bn_running_mean is not None and rm is not None:
                bn_running_mean.copy_(rm)
            if bn_running_var is not None and rv is not None:
                bn_running_var.copy_(rv)
    return (x1 * GATES[gate](z)).to(x.dtype)
