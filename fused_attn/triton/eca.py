"""Efficient Channel Attention in Triton: the channel gate's passes of
triton/se.py (pool, rescale; Σ dy·x, dx) around the 1-D convolution across
channels, which runs on the pooled [N, C] tensor in torch — it needs each
channel's neighbours, all known once the pool pass ends, so it costs no pass
over x. Two phases, 3|x| forward and 4|x| backward, like the SE ops.
"""
from typing import Optional

import torch
from torch.library import triton_op

from ..ops.eca import register_eca_autograd
from ..ops.se import acc_dtype
from ..reference.eca import pad_channels
from ..reference.se import GATES
from .se import dense, gate_backward, input_grad_pass, on_tensor_device, pool_pass, reduce_pass, scale_pass


def _windows(v, k, padding):
    """[n, C] → [n, C, k]: windows[n, c, j] = v[n, c + j - pad] of the padded rows."""
    if v.shape[1] == 0:   # no channels, no windows (the padded row would be shorter than k)
        return v.new_zeros((v.shape[0], 0, k))
    return pad_channels(v, (k - 1) // 2, padding).unfold(1, k, 1)


@triton_op("fused_attn::eca_forward_triton", mutates_args=())
@on_tensor_device
def eca_forward(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor], padding: str,
                gate: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as ``fused_attn::eca_forward``: (y, pooled, logits)."""
    acc = acc_dtype(x.dtype)
    x, strides = dense(x)
    pooled, _ = pool_pass(x, strides, False)
    k = conv_weight.shape[0]
    # The convolution as windows · w, not F.conv1d: cuDNN may run an fp32
    # convolution in TF32 (torch.backends.cudnn.allow_tf32 is on by default),
    # ~1e-3 relative error in the logits; an fp32 matmul stays in fp32 unless
    # the user opts in.
    logits = _windows(pooled, k, padding) @ conv_weight.to(acc)
    if conv_bias is not None:
        logits = logits + conv_bias.to(acc)
    logits = logits.contiguous()
    y = scale_pass(x, strides, GATES[gate](logits))
    return y, pooled, logits


@triton_op("fused_attn::eca_backward_triton", mutates_args=())
@on_tensor_device
def eca_backward(grad_y: torch.Tensor, x: torch.Tensor, conv_weight: torch.Tensor, pooled: torch.Tensor,
                 logits: torch.Tensor, padding: str, gate: str, has_bias: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as ``fused_attn::eca_backward``."""
    acc = acc_dtype(x.dtype)
    x, strides = dense(x)
    empty = x.new_empty((0, 0), dtype=acc)
    dy, s, _ = reduce_pass(grad_y, x, strides, empty, False)
    g = GATES[gate](logits)
    dz = gate_backward(gate, s, logits, g)
    k = conv_weight.shape[0]
    w = conv_weight.to(acc)
    # The transposed convolution: dL/dp[c] = Σ_j flip(w)[j] dz[c + j - pad].
    dp = _windows(dz, k, padding) @ w.flip(0)
    dw = (_windows(pooled, k, padding).reshape(-1, k).t() @ dz.reshape(-1)).to(conv_weight.dtype)
    db = dz.sum().reshape(1).to(conv_weight.dtype) if has_bias else conv_weight.new_empty((0,))
    dx = input_grad_pass(dy, x, strides, g, dp, empty, empty, False)
    return dx, dw, db


register_eca_autograd("fused_attn::eca_forward_triton", torch.ops.fused_attn.eca_backward_triton)
