"""Squeeze-and-Excitation as custom operators.

``fused_attn::se_forward`` and ``fused_attn::se_backward`` are declared in C++
(csrc/fused_attn.cpp) and implemented per backend (csrc/cpu, csrc/cuda). Here:
the argument checks shared by every entry point, the fake kernels that let
``torch.compile`` and ``torch.export`` trace the ops, and the autograd formula
for the Triton op of the same signature (the C++ op's is csrc/autograd.cpp).
"""
import contextlib

import torch
from torch._prims_common import suggest_memory_format

from .._extension import HAS_C
from ..reference.se import ACTIVATIONS, GATES, POOLS

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_names(act, gate, pool):
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {tuple(ACTIVATIONS)}, got {act!r}")
    if gate not in GATES:
        raise ValueError(f"gate must be one of {tuple(GATES)}, got {gate!r}")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")


def _check_param(x, t, name, shape):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but x has dtype {x.dtype}; "
                        f"the weights must have the input's dtype")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")


def check_se_args(x, w1, b1, w2, b2):
    """Raises ValueError / TypeError naming the offending argument. fc weights
    are 2-D here ([out, in]); the functional API flattens 1×1 conv weights."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [N, C, H, W], got shape {list(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    C = x.shape[1]
    if not isinstance(w1, torch.Tensor) or w1.dim() != 2 or w1.shape[1] != C:
        shape = list(w1.shape) if isinstance(w1, torch.Tensor) else type(w1).__name__
        raise ValueError(f"fc1_weight must have shape [rd, {C}] for x with C={C}, got {shape}")
    rd = w1.shape[0]
    _check_param(x, w1, "fc1_weight", (rd, C))
    if b1 is not None:
        _check_param(x, b1, "fc1_bias", (rd,))
    if w2 is not None:
        _check_param(x, w2, "fc2_weight", (C, rd))
        if b2 is not None:
            _check_param(x, b2, "fc2_bias", (C,))
    else:
        if rd != C:
            raise ValueError(f"without fc2_weight (effective SE) fc1_weight must be [C, C] = [{C}, {C}], "
                             f"got {list(w1.shape)}")
        if b2 is not None:
            raise ValueError("fc2_bias given without fc2_weight")


def no_autocast(device_type):
    """The ops choose their own precisions (fp32 accumulation; outputs in x's
    dtype): ATen calls inside a kernel must not be re-cast by an enclosing
    ``torch.autocast``, in the forward or in the backward. (A no-op context
    when autocast is off, so traced graphs stay plain.)"""
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def wants_graph(x):
    """Whether the backward of x's op must return its gradients as a graph
    (fused_attn/ops/graph_backward.py): it runs with create_graph=True, and y
    is not empty (when it is, nothing depends on the gradients: the fused
    backward's constants stand). csrc/autograd.cpp's wants_graph is its twin."""
    return torch.is_grad_enabled() and x.numel() > 0


def acc_dtype(dtype):
    """The dtype pooling and the excitation accumulate in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


if HAS_C:

    @torch.library.register_fake("fused_attn::se_forward")
    def _se_forward_fake(x, w1, b1, w2, b2, act, gate, pool):
        check_se_args(x, w1, b1, w2, b2)
        check_names(act, gate, pool)
        N, C = x.shape[0], x.shape[1]
        acc = acc_dtype(x.dtype)
        with_max = pool == "avgmax"
        y = torch.empty_like(x.contiguous(memory_format=suggest_memory_format(x)))
        pooled = x.new_empty((N, C), dtype=acc)
        maxv = x.new_empty((N, C) if with_max else (0, 0), dtype=acc)
        hidden = x.new_empty((N, w1.shape[0]) if w2 is not None else (0, 0), dtype=acc)
        logits = x.new_empty((N, C), dtype=acc)
        return y, pooled, maxv, hidden, logits

    @torch.library.register_fake("fused_attn::se_backward")
    def _se_backward_fake(dy, x, w1, w2, pooled, maxv, hidden, logits, act, gate, pool, has_b1, has_b2):
        check_se_args(x, w1, None, w2, None)
        check_names(act, gate, pool)
        torch._check(dy.shape == x.shape, lambda: f"grad_y must have x's shape {list(x.shape)}, got {list(dy.shape)}")
        dx = torch.empty_like(x.contiguous(memory_format=suggest_memory_format(x)))

        def grad_like(exists, shape):  # a [0] tensor stands for "no such parameter"
            return w1.new_empty(shape if exists else (0,))

        return (dx, grad_like(True, w1.shape), grad_like(has_b1, (w1.shape[0],)),
                grad_like(w2 is not None, None if w2 is None else w2.shape),
                grad_like(has_b2 and w2 is not None, (x.shape[1],)))


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, act, gate, pool = inputs
    _, pooled, maxv, hidden, logits = output
    ctx.save_for_backward(x, w1, w2, pooled, maxv, hidden, logits, b1, b2)
    ctx.variant = (act, gate, pool, b1 is not None, b2 is not None)
    ctx.mark_non_differentiable(pooled, maxv, hidden, logits)


def register_se_autograd(forward_op, backward_op):
    """Autograd for a backend's own SE forward op with the C++ op's signature
    (the Triton one): its backward is ``backward_op``. The C++ ops' autograd is
    the same formula in C++ (csrc/autograd.cpp), to spare them this Python
    layer's per-call cost."""

    def backward(ctx, dy, *_unused):
        x, w1, w2, pooled, maxv, hidden, logits, b1, b2 = ctx.saved_tensors
        act, gate, pool, has_b1, has_b2 = ctx.variant
        if wants_graph(x):
            from .graph_backward import se_graph_grads

            return (*se_graph_grads(dy, x, w1, b1, w2, b2, act, gate, pool), None, None, None)
        with no_autocast(x.device.type):
            dx, dw1, db1, dw2, db2 = backward_op(dy, x, w1, w2, pooled, maxv, hidden, logits, act, gate, pool,
                                                 has_b1, has_b2)
        return (dx, dw1, db1 if has_b1 else None, dw2 if w2 is not None else None,
                db2 if has_b2 else None, None, None, None)

    torch.library.register_autograd(forward_op, backward, setup_context=_setup_context)

