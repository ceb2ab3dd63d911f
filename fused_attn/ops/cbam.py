"""CBAM as custom operators.

``fused_attn::cbam_forward(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, bn_weight, bn_bias,
bn_running_mean, bn_running_var, bn_eps, act, gate, light, max_first) -> (y, pooled, logits, smap, z, bn_stats)``
and ``fused_attn::cbam_backward(...)`` are declared in C++ (csrc/fused_attn.cpp).
fc weights are [rd, C] / [C, rd]; spatial_weight is [maps, k, k] (maps = 2, or
1 when light) in the module's channel order; the BatchNorm normalizes with the
running statistics when both are given, else with the batch's. Saved for the
backward (accumulation dtype): pooled [2, N, C] (spatial mean and max of x),
logits [N, C], smap [2, N, H·W] (channel mean and max of x1), z [N, H·W]
(conv output) and bn_stats [2] (mean and biased variance used). Here: the
argument checks shared by every entry point, fake kernels and the Triton op's
autograd (the C++ op's is csrc/autograd.cpp).
"""
import torch
from torch._prims_common import suggest_memory_format

from .._extension import HAS_C
from .se import FLOAT_DTYPES, acc_dtype, check_names, check_se_args, no_autocast, wants_graph

#: Largest spatial kernel the fused ops take (CBAM uses 7; 3 in small nets).
MAX_SPATIAL_KERNEL = 15


def check_cbam_names(act, gate):
    check_names(act, gate, "avg")


def check_cbam_args(x, w1, b1, w2, b2, ws, light, bn=()):
    """Raises ValueError / TypeError naming the offending argument. w1, w2 are
    2-D; ws is [maps, k, k]; bn: (name, tensor or None) pairs, one element each."""
    if w2 is None:
        raise ValueError("fc2_weight is required: CBAM's MLP has two layers")
    check_se_args(x, w1, b1, w2, b2)
    maps = 1 if light else 2
    if not isinstance(ws, torch.Tensor) or ws.dim() != 3 or ws.shape[0] != maps or ws.shape[1] != ws.shape[2]:
        shape = list(ws.shape) if isinstance(ws, torch.Tensor) else type(ws).__name__
        raise ValueError(f"spatial_weight must have shape [1, {maps}, k, k] (a Conv2d({maps}, 1, k) weight"
                         f"{', light CBAM' if light else ''}), got {shape}")
    k = ws.shape[-1]
    if k % 2 == 0 or k > MAX_SPATIAL_KERNEL:
        raise ValueError(f"spatial_weight's kernel size must be odd and at most {MAX_SPATIAL_KERNEL} "
                         f"('same' padding), got k={k}")
    if ws.device != x.device:
        raise ValueError(f"spatial_weight is on {ws.device} but x is on {x.device}")
    if ws.dtype != x.dtype:
        raise TypeError(f"spatial_weight has dtype {ws.dtype} but x has dtype {x.dtype}; "
                        f"the weights must have the input's dtype")
    for name, t in bn:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a Tensor or None, got {type(t).__name__}")
        if t.numel() != 1:
            raise ValueError(f"{name} must have one element (a BatchNorm2d(1) parameter), got shape {list(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


if HAS_C:

    @torch.library.register_fake("fused_attn::cbam_forward")
    def _cbam_forward_fake(x, w1, b1, w2, b2, ws, bn_w, bn_b, bn_rm, bn_rv, eps, act, gate, light, max_first):
        check_cbam_args(x, w1, b1, w2, b2, ws, light,
                        (("bn_weight", bn_w), ("bn_bias", bn_b), ("bn_running_mean", bn_rm), ("bn_running_var", bn_rv)))
        check_cbam_names(act, gate)
        N, C, H, W = x.shape
        acc = acc_dtype(x.dtype)
        y = torch.empty_like(x.contiguous(memory_format=suggest_memory_format(x)))
        return (y, x.new_empty((2, N, C), dtype=acc), x.new_empty((N, C), dtype=acc),
                x.new_empty((2, N, H * W), dtype=acc), x.new_empty((N, H * W), dtype=acc), x.new_empty((2,), dtype=acc))

    @torch.library.register_fake("fused_attn::cbam_backward")
    def _cbam_backward_fake(dy, x, w1, b1, w2, b2, ws, bn_w, bn_b, pooled, logits, smap, z, stats, batch_stats, eps,
                            act, gate, light, max_first):
        check_cbam_args(x, w1, b1, w2, b2, ws, light)
        check_cbam_names(act, gate)
        torch._check(dy.shape == x.shape, lambda: f"grad_y must have x's shape {list(x.shape)}, got {list(dy.shape)}")
        dx = torch.empty_like(x.contiguous(memory_format=suggest_memory_format(x)))

        def like(t):
            return ws.new_empty((0,)) if t is None else t.new_empty(t.shape)

        return dx, like(w1), like(b1), like(w2), like(b2), like(ws), like(bn_w), like(bn_b)


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, ws, bn_w, bn_b, bn_rm, bn_rv, eps, act, gate, light, max_first = inputs
    _, pooled, logits, smap, z, stats = output
    ctx.save_for_backward(x, w1, b1, w2, b2, ws, bn_w, bn_b, pooled, logits, smap, z, stats)
    ctx.variant = (bn_rm is None or bn_rv is None, eps, act, gate, light, max_first)
    ctx.mark_non_differentiable(pooled, logits, smap, z, stats)


def register_cbam_autograd(forward_op, backward_op):
    """Autograd for a backend's own CBAM forward op with the C++ op's signature
    (the Triton one): its backward is ``backward_op``. The C++ ops' autograd is
    the same formula in C++ (csrc/autograd.cpp), to spare them this Python
    layer's per-call cost."""

    def backward(ctx, dy, *_unused):
        x, w1, b1, w2, b2, ws, bn_w, bn_b, pooled, logits, smap, z, stats = ctx.saved_tensors
        batch_stats, eps, act, gate, light, max_first = ctx.variant
        if wants_graph(x):
            from .graph_backward import cbam_graph_grads

            # eval: the running statistics the forward normalized with (bn_stats)
            rm, rv = (None, None) if batch_stats else (stats[0:1], stats[1:2])
            return (*cbam_graph_grads(dy, x, w1, b1, w2, b2, ws, bn_w, bn_b, rm, rv, eps, act, gate, light,
                                      max_first), None, None, None, None, None, None, None)
        with no_autocast(x.device.type):
            grads = backward_op(dy, x, w1, b1, w2, b2, ws, bn_w, bn_b, pooled, logits, smap, z, stats, batch_stats,
                                eps, act, gate, light, max_first)
        dx, dw1, db1, dw2, db2, dws, dbnw, dbnb = grads
        present = (None, None, b1, None, b2, None, bn_w, bn_b)
        out = [g if (i in (0, 1, 3, 5) or present[i] is not None) else None
               for i, g in enumerate((dx, dw1, db1, dw2, db2, dws, dbnw, dbnb))]
        return (*out, None, None, None, None, None, None, None)

    torch.library.register_autograd(forward_op, backward, setup_context=_setup_context)

