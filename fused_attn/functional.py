"""The public functions, one per attention block."""
from typing import Optional

import torch
from torch import Tensor

from . import _backends, reference
from .ops import cbam as _cbam
from .ops import eca as _eca
from .ops import se as _se


def _as_matrix(w, name):
    """Accept a Linear weight [out, in] or a 1×1 conv weight [out, in, 1, 1]."""
    if w is None or not isinstance(w, torch.Tensor):
        return w
    if w.dim() == 4 and w.shape[2] == 1 and w.shape[3] == 1:
        return w.flatten(1)
    if w.dim() != 2:
        raise ValueError(f"{name} must be [out, in] or [out, in, 1, 1], got shape {list(w.shape)}")
    return w


def _autocast_weights(x, *weights):
    """Under autocast, a layer's input arrives in the autocast dtype while the
    block's parameters stay float32; eager PyTorch casts them for its 1×1
    convs. Do the same (the cast is differentiable, so the float32 parameters
    get their gradients): the weights take x's dtype when autocast is on for
    x's device and x is of lower precision. Outside autocast a mismatch is an
    error, raised by the argument checks."""
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float16, torch.bfloat16):
        return weights
    if not torch.is_autocast_enabled(x.device.type):
        return weights
    return tuple(w.to(x.dtype) if isinstance(w, torch.Tensor) and w.is_floating_point() and w.dtype != x.dtype
                 else w for w in weights)


def squeeze_excitation(x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor] = None,
                       fc2_weight: Optional[Tensor] = None, fc2_bias: Optional[Tensor] = None, *,
                       act: str = "relu", gate: str = "sigmoid", pool: str = "avg") -> Tensor:
    """Squeeze-and-Excitation, fused: one pass to pool, one to rescale.

    Args:
        x: [N, C, H, W], float32 / float64 / float16 / bfloat16, NCHW or
            channels_last (the output keeps the input's memory format).
        fc1_weight: [rd, C] or [rd, C, 1, 1]; fc1_bias: [rd] or None.
        fc2_weight: [C, rd] or [C, rd, 1, 1]; fc2_bias: [C] or None.
            ``fc2_weight=None`` is the one-layer "effective SE" (timm
            ``EffectiveSEModule``): fc1_weight is then [C, C].
        act: hidden activation: "relu", "silu", "gelu", "gelu_tanh", "hard_swish".
        gate: "sigmoid" or "hard_sigmoid" (``F.hardsigmoid``).
        pool: "avg" (mean over H, W) or "avgmax" (0.5·mean + 0.5·max, timm's
            ``add_maxpool``).

    Returns:
        [N, C, H, W] in x's dtype and memory format. Pooling and the
        excitation accumulate in float32 (float64 for float64 inputs).

    Equivalent to::

        p = x.mean((2, 3))                                   # pool="avg"
        p = 0.5 * p + 0.5 * x.amax((2, 3))                   # pool="avgmax"
        z = F.linear(act(F.linear(p, fc1_weight, fc1_bias)), fc2_weight, fc2_bias)
        y = x * gate(z)[:, :, None, None]

    Under ``torch.autocast`` a float16 / bfloat16 x may come with float32
    weights (they are cast to x's dtype, as eager's 1×1 convs do).
    """
    _se.check_names(act, gate, pool)
    fc1_weight, fc1_bias, fc2_weight, fc2_bias = _autocast_weights(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    w1 = _as_matrix(fc1_weight, "fc1_weight")
    w2 = _as_matrix(fc2_weight, "fc2_weight")
    _se.check_se_args(x, w1, fc1_bias, w2, fc2_bias)
    backend = _backends.resolve(x.device.type)
    if backend == "reference":
        return reference.squeeze_excitation(x, w1, fc1_bias, w2, fc2_bias, act=act, gate=gate, pool=pool)
    op = torch.ops.fused_attn.se_forward_triton if backend == "triton" else torch.ops.fused_attn.se_forward
    with _se.no_autocast(x.device.type):
        return op(x, w1, fc1_bias, w2, fc2_bias, act, gate, pool)[0]


def efficient_channel_attention(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor] = None, *,
                                padding: str = "zeros", gate: str = "sigmoid") -> Tensor:
    """Efficient Channel Attention (ECA / CECA), fused: one pass to pool, one to rescale.

    Args:
        x: [N, C, H, W], float32 / float64 / float16 / bfloat16, NCHW or
            channels_last (the output keeps the input's memory format).
        conv_weight: [k] or [1, 1, k] (a ``Conv1d(1, 1, k)`` weight), k odd.
        conv_bias: [1] or None (timm ``CecaModule`` with ``act_layer``).
        padding: "zeros" (timm ``EcaModule``, official ``eca_layer``) or
            "circular" (timm ``CecaModule``; wraps modulo C, so C < k works).
        gate: "sigmoid" or "hard_sigmoid".

    Returns:
        [N, C, H, W] in x's dtype and memory format; pooling and the
        convolution accumulate in float32 (float64 for float64 inputs).

    Equivalent to::

        k = conv_weight.numel(); pad = (k - 1) // 2
        p = x.mean((2, 3))[:, None, :]                              # [N, 1, C]
        p = F.pad(p, (pad, pad), mode="constant" or "circular")
        z = F.conv1d(p, conv_weight.view(1, 1, k), conv_bias)[:, 0]  # [N, C]
        y = x * gate(z)[:, :, None, None]
    """
    _eca.check_eca_names(padding, gate)
    conv_weight, conv_bias = _autocast_weights(x, conv_weight, conv_bias)
    w = conv_weight
    if isinstance(w, torch.Tensor) and w.dim() == 3:
        if w.shape[0] != 1 or w.shape[1] != 1:
            raise ValueError(f"conv_weight must be [k] or [1, 1, k], got shape {list(w.shape)}")
        w = w.reshape(-1)
    _eca.check_eca_args(x, w, conv_bias)
    backend = _backends.resolve(x.device.type)
    if backend == "reference":
        return reference.efficient_channel_attention(x, w, conv_bias, padding=padding, gate=gate)
    op = torch.ops.fused_attn.eca_forward_triton if backend == "triton" else torch.ops.fused_attn.eca_forward
    with _se.no_autocast(x.device.type):
        return op(x, w, conv_bias, padding, gate)[0]


def _cbam_missing():
    from . import triton as fa_triton

    missing = {}
    if not hasattr(fa_triton, "cbam"):
        missing["triton"] = "CBAM has no Triton kernels yet"
    return missing


# Backends without CBAM kernels (`auto` skips them), fixed at import.
_CBAM_MISSING = _cbam_missing()


def _bn_update(stats, running_mean, running_var, num_batches_tracked, momentum, count):
    """Running statistics as nn.BatchNorm2d updates them in training: an
    exponential average (or, with momentum None, the cumulative one) of the
    batch mean and the unbiased batch variance."""
    with torch.no_grad():
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
            if momentum is None:
                # 1 / batches as a device tensor, not float(num_batches_tracked):
                # no host sync (CUDA graphs), no graph break (torch.compile).
                momentum = num_batches_tracked.double().reciprocal()
        if momentum is None:
            momentum = 0.0

        def update(running, batch):
            batch = batch.to(running.dtype)
            if isinstance(momentum, torch.Tensor):
                running.mul_(1 - momentum).add_(batch * momentum)
            else:
                running.mul_(1 - momentum).add_(batch, alpha=momentum)

        if running_mean is not None:
            update(running_mean, stats[0])
        if running_var is not None:
            update(running_var, stats[1] * (count / max(count - 1, 1)))


def cbam(x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor, fc2_bias: Optional[Tensor],
         spatial_weight: Tensor, *, bn_weight: Optional[Tensor] = None, bn_bias: Optional[Tensor] = None,
         bn_running_mean: Optional[Tensor] = None, bn_running_var: Optional[Tensor] = None,
         bn_num_batches_tracked: Optional[Tensor] = None, bn_training: bool = False,
         bn_momentum: Optional[float] = 0.1, bn_eps: float = 1e-5, act: str = "relu", gate: str = "sigmoid",
         light: bool = False, pool_order: str = "mean_max") -> Tensor:
    """CBAM (channel then spatial attention), fused.

    Args:
        x: [N, C, H, W], float32 / float64 / float16 / bfloat16, NCHW or
            channels_last (the output keeps the input's memory format).
        fc1_weight: [rd, C] or [rd, C, 1, 1]; fc1_bias: [rd] or None.
        fc2_weight: [C, rd] or [C, rd, 1, 1]; fc2_bias: [C] or None (timm's
            1×1 convs have none; the official ``nn.Linear`` layers do).
        spatial_weight: [1, 2, k, k] ([1, 1, k, k] when ``light``), k odd.
        bn_*: the spatial gate's ``BatchNorm2d(1)``: affine weight and bias
            ([1] or None), running statistics and ``num_batches_tracked``
            (updated in place when ``bn_training``, as the module updates
            them), momentum and eps. Without running statistics the batch's
            are always used.
        act: the MLP's hidden activation ("relu", "silu", ...).
        gate: "sigmoid" or "hard_sigmoid" (the light channel gate is always
            sigmoid, as in timm).
        light: timm ``LightCbamModule``: one MLP pass on 0.5·mean + 0.5·max,
            a 1-channel spatial map 0.5·mean_c + 0.5·max_c.
        pool_order: "mean_max" (timm) or "max_mean" (the official CBAM):
            the spatial conv's input channel order.

    Returns:
        [N, C, H, W] in x's dtype and memory format. Pooling, the MLP, the
        spatial map and the BatchNorm accumulate in float32 (float64 for
        float64 inputs).

    Equivalent to ``fused_attn.reference.cbam`` (same arguments)::

        g  = gate(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))      # mlp = fc2 ∘ act ∘ fc1
        x1 = x * g[:, :, None, None]
        m  = torch.stack([x1.mean(1), x1.amax(1)], 1)            # [max, mean] for pool_order="max_mean"
        y  = x1 * gate(batch_norm(conv2d(m, spatial_weight, padding=k // 2)))
    """
    from .reference.cbam import POOL_ORDERS

    _cbam.check_cbam_names(act, gate)
    if pool_order not in POOL_ORDERS:
        raise ValueError(f"pool_order must be one of {POOL_ORDERS}, got {pool_order!r}")
    fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight = _autocast_weights(
        x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight)
    w1 = _as_matrix(fc1_weight, "fc1_weight")
    w2 = _as_matrix(fc2_weight, "fc2_weight")
    ws = spatial_weight
    if isinstance(ws, torch.Tensor) and ws.dim() == 4:
        if ws.shape[0] != 1:
            raise ValueError(f"spatial_weight must be [1, maps, k, k] (one output channel), got {list(ws.shape)}")
        ws = ws[0]
    bn = (("bn_weight", bn_weight), ("bn_bias", bn_bias), ("bn_running_mean", bn_running_mean),
          ("bn_running_var", bn_running_var))
    _cbam.check_cbam_args(x, w1, fc1_bias, w2, fc2_bias, ws, light, bn)
    backend = _backends.resolve(x.device.type, _CBAM_MISSING)
    if backend == "reference":
        return reference.cbam(x, w1, fc1_bias, w2, fc2_bias, ws.unsqueeze(0), bn_weight=bn_weight, bn_bias=bn_bias,
                              bn_running_mean=bn_running_mean, bn_running_var=bn_running_var,
                              bn_num_batches_tracked=bn_num_batches_tracked, bn_training=bn_training,
                              bn_momentum=bn_momentum, bn_eps=bn_eps, act=act, gate=gate, light=light,
                              pool_order=pool_order)
    batch_stats = bn_training or bn_running_mean is None or bn_running_var is None
    rm = None if batch_stats else bn_running_mean
    rv = None if batch_stats else bn_running_var
    op = torch.ops.fused_attn.cbam_forward_triton if backend == "triton" else torch.ops.fused_attn.cbam_forward
    with _se.no_autocast(x.device.type):
        y, _, _, _, _, stats = op(x, w1, fc1_bias, w2, fc2_bias, ws, bn_weight, bn_bias, rm, rv, float(bn_eps), act,
                                  gate, light, pool_order == "max_mean")
    if bn_training and (bn_running_mean is not None or bn_num_batches_tracked is not None):
        _bn_update(stats, bn_running_mean, bn_running_var, bn_num_batches_tracked, bn_momentum,
                   x.shape[0] * x.shape[2] * x.shape[3])
    return y
