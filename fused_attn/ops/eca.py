"""Efficient Channel Attention as custom operators.

``fused_attn::eca_forward(x, conv_weight, conv_bias, padding, gate) -> (y, pooled, logits)``
and ``fused_attn::eca_backward(grad_y, x, conv_weight, pooled, logits, padding, gate, has_bias)
-> (grad_x, grad_weight, grad_bias)`` are declared in C++ (csrc/fused_attn.cpp);
conv_weight is [k] (k odd), conv_bias [1]; pooled and logits are [N, C] in the
accumulation dtype; grad_bias is a [0] tensor when there is no bias. Here: the
argument checks, fake kernels and the Triton op's autograd (the C++ op's is
csrc/autograd.cpp).
"""
import torch
from torch._prims_common import suggest_memory_format

from .._extension import HAS_C
from ..reference.eca import PADDINGS
from ..reference.se import GATES
from .se import FLOAT_DTYPES, _check_param, acc_dtype, no_autocast, wants_graph


def check_eca_names(padding, gate):
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if gate not in GATES:
        raise ValueError(f"gate must be one of {tuple(GATES)}, got {gate!r}")


def check_eca_args(x, w, b):
    """Raises ValueError / TypeError naming the offending argument; w is [k]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [N, C, H, W], got shape {list(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if not isinstance(w, torch.Tensor) or w.dim() != 1:
        shape = list(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"conv_weight must have shape [k] or [1, 1, k], got {shape}")
    k = w.shape[0]
    if k % 2 == 0:
        raise ValueError(f"conv_weight's kernel size must be odd (the output keeps C channels), got k={k}")
    _check_param(x, w, "conv_weight", (k,))
    if b is not None:
        _check_param(x, b, "conv_bias", (1,))


if HAS_C:

    @torch.library.register_fake("fused_attn::eca_forward")
    def _eca_forward_fake(x, w, b, padding, gate):
        check_eca_args(x, w, b)
        check_eca_names(padding, gate)
        N, C = x.shape[0], x.shape[1]
        acc = acc_dtype(x.dtype)
        y = torch.empty_like(x.contiguous(memory_format=suggest_memory_format(x)))
        return y, x.new_empty((N, C), dtype=acc), x.new_empty((N, C), dtype=acc)

    @torch.library.register_fake("fused_attn::eca_backward")
    def _eca_backward_fake(dy, x, w, pooled, logits, padding, gate, has_bias):
        check_eca_args(x, w, None)
        check_eca_names(padding, gate)
        torch._check(dy.shape == x.shape, lambda: f"grad_y must have x's shape {list(x.shape)}, got {list(dy.shape)}")
        dx = torch.empty_like(x.contiguous(memory_format=suggest_memory_format(x)))
        return dx, w.new_empty(w.shape), w.new_empty((1,) if has_bias else (0,))


def _setup_context(ctx, inputs, output):
    x, w, b, padding, gate = inputs
    _, pooled, logits = output
    ctx.save_for_backward(x, w, pooled, logits, b)
    ctx.variant = (padding, gate, b is not None)
    ctx.mark_non_differentiable(pooled, logits)


def register_eca_autograd(forward_op, backward_op):
    """Autograd for a backend's own ECA forward op with the C++ op's signature
    (the Triton one): its backward is ``backward_op``. The C++ ops' autograd is
    the same formula in C++ (csrc/autograd.cpp), to spare them this Python
    layer's per-call cost."""

    def backward(ctx, dy, *_unused):
        x, w, pooled, logits, b = ctx.saved_tensors
        padding, gate, has_bias = ctx.variant
        if wants_graph(x):
            from .graph_backward import eca_graph_grads

            return (*eca_graph_grads(dy, x, w, b, padding, gate), None, None)
        with no_autocast(x.device.type):
            dx, dw, db = backward_op(dy, x, w, pooled, logits, padding, gate, has_bias)
        return dx, dw, db if has_bias else None, None, None

    torch.library.register_autograd(forward_op, backward, setup_context=_setup_context)

