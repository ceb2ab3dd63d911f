"""The public functions, one per attention block."""
import torch

from . import _backends, reference
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


def squeeze_excitation(x, fc1_weight, fc1_bias=None, fc2_weight=None, fc2_bias=None, *,
                       act="relu", gate="sigmoid", pool="avg"):
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


def efficient_channel_attention(x, conv_weight, conv_bias=None, *, padding="zeros", gate="sigmoid"):
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
